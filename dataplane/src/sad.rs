//! The SA database: every child SA of the node, fed by IKE events, read by
//! the packet workers.
//!
//! Events, not installs (STYLE.md): the IKE endpoint emits
//! [`Event::ChildSaEstablished`] / [`Event::ChildSaDeleted`] /
//! [`Event::IkeSaDeleted`] / [`Event::IkeSaRekeyed`] / [`Event::IkeSaFailed`],
//! the node hands each one to [`Sad::handle_event`], and this is the one
//! place that decides what is installed.
//!
//! - **Inbound** SAs by SPI: what an ESP packet carries (RFC 4303 §2.1);
//!   this node allocated it, so it is unique here.
//! - **Outbound**: one SA per tunnel, the newest. After a rekey
//!   (`ChildSa::rekey_of`) outbound switches to the new SA at once, while
//!   the old inbound SA keeps accepting until its own `ChildSaDeleted`
//!   (make-before-break: packets the peer sent before it switched still
//!   arrive).
//!
//! # Why a copy-on-write snapshot (arc-swap) and not a concurrent map
//!
//! The read path runs per packet on every worker; writes happen a few times
//! per tunnel per hour (installs, rekeys, deletes). So the readers get an
//! immutable [`Snapshot`] behind an [`ArcSwap`]: a load is a few
//! thread-local atomic operations, takes no lock, never waits for a writer,
//! and writes no cache line shared with other readers. A concurrent map
//! such as dashmap would take a shard `RwLock` per lookup: every reader
//! writes the lock word (a cache line bouncing between cores at packet
//! rate) and waits while a writer holds the shard. A writer here clones the
//! maps (pointers and small keys only: O(SAs), about a millisecond at 10^5
//! SAs), applies the event and publishes the new snapshot; writers are
//! serialised by a mutex readers never touch. One snapshot also makes a
//! rekey atomic for readers: the new inbound SA and the outbound switch
//! appear together.
//!
//! Mutable per-SA state lives in the SA objects themselves, shared by all
//! snapshots through `Arc`: the outbound sequence counter is an atomic, the
//! replay window a per-SA mutex held for a bitmap check (see `bench-esp`),
//! counters are relaxed atomics.
//!
//! Keys never leave the SA objects: [`Sad::list`] returns [`SaSummary`],
//! which carries everything status needs and no key material, and no type
//! here prints a key in `Debug`.

use crate::counters::{CountersSnapshot, DropCounters, DropReason, TunnelCounters};
use crate::esp::replay::DEFAULT_WINDOW;
use crate::esp::{Decrypted, EspHeader, InboundSa, OutboundSa, SaError, SaInfo};
use anyhub_ike::wire::TrafficSelector;
use anyhub_ike::{ChildSa, Event, IkeSaHandle};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the node's SAs are built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SadConfig {
    /// This node's index (1..=4095): the high bits of its IVs.
    pub node_index: u16,
    /// Anti-replay window of every inbound SA (a power of two, 64..=65536).
    pub replay_window: u32,
}

impl SadConfig {
    /// The defaults for node `node_index`: a 1024-packet replay window.
    pub fn new(node_index: u16) -> SadConfig {
        SadConfig {
            node_index,
            replay_window: DEFAULT_WINDOW,
        }
    }
}

/// What [`Sad::handle_event`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A child SA was installed. `replaced`: one with the same inbound SPI
    /// was there. If its outbound SPI is the same too, it is the same SA
    /// delivered twice and the installed one is kept (its replay window and
    /// IV counter must not restart); otherwise it is replaced.
    Installed { spi_in: u32, replaced: bool },
    /// The SA could not be built (algorithm the dataplane lacks, bad key
    /// length); nothing was installed.
    Refused { spi_in: u32, error: SaError },
    /// This many child SAs were removed.
    Removed(usize),
    /// This many child SAs now belong to a rekeyed IKE SA.
    Moved(usize),
    /// The event does not concern the SA database.
    None,
}

/// A key-less view of one installed child SA, for status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaSummary {
    pub tunnel: Arc<str>,
    pub ike: IkeSaHandle,
    pub spi_in: u32,
    pub spi_out: u32,
    /// The agreed ESP algorithms, in strongSwan notation.
    pub proposal: String,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub encap: bool,
    pub lifetime: Duration,
    pub installed_at: Instant,
}

/// One installed child SA.
#[derive(Clone, Debug)]
pub struct Child {
    pub inbound: Arc<InboundSa>,
    pub outbound: Arc<OutboundSa>,
    /// The IKE SA it belongs to now (moves on IKE SA rekeys).
    pub ike: IkeSaHandle,
    /// Its tunnel's counters.
    pub tunnel: Arc<TunnelCounters>,
    /// The outer addresses ESP travels between now (ours, the peer's):
    /// install-time values until the peer's NAT mapping changes
    /// ([`Event::IkeSaMoved`]).
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Install order, to find a tunnel's newest SA.
    order: u64,
}

/// A fast hasher for SPIs and tunnel names: one folded 64×64→128-bit
/// multiply per word (foldhash's and aHash's mixing step). Not resistant to
/// chosen collisions, which is fine: the keys are inserted by us (SPIs we
/// allocated at random, configured tunnel names); a peer only looks keys up.
#[derive(Default)]
pub struct SpiHasher(u64);

impl Hasher for SpiHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

impl SpiHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        // A digit of pi as the multiplier; the fold mixes every input bit
        // into every output bit.
        let p = u128::from(self.0 ^ w) * 0x243f_6a88_85a3_08d3;
        self.0 = (p as u64) ^ (p >> 64) as u64;
    }
}

type FastHash = BuildHasherDefault<SpiHasher>;

/// A tunnel's current outbound SA, its counters and the peer's address.
type OutboundEntry = (Arc<OutboundSa>, Arc<TunnelCounters>, SocketAddr);

/// An immutable view of the database: what a worker reads per packet or
/// per batch.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    inbound: HashMap<u32, Child, FastHash>,
    /// Tunnel → its current outbound SA and its counters (one lookup per
    /// packet).
    /// The address is where its ESP goes now (the peer's, NAT-T aware).
    outbound: HashMap<Arc<str>, OutboundEntry, FastHash>,
    tunnels: HashMap<Arc<str>, Arc<TunnelCounters>, FastHash>,
    /// Drops no SA can be blamed for (unknown SPI, malformed header); the
    /// same counters in every snapshot.
    node_drops: Arc<DropCounters>,
}

/// An inbound packet the database accepted.
#[derive(Debug)]
pub struct Received<'s> {
    /// The SA that opened it: tunnel, selectors to enforce.
    pub child: &'s Child,
    pub decrypted: Decrypted,
}

/// An outbound packet the database encrypted.
#[derive(Debug)]
pub struct Sent<'s> {
    /// The SA used: ESP-in-UDP or not.
    pub sa: &'s Arc<OutboundSa>,
    /// Where to send it: the peer's current address (install-time, or the
    /// new one after its NAT mapping changed, [`Event::IkeSaMoved`]).
    pub to: SocketAddr,
    /// The ESP packet's range in the buffer.
    pub esp: Range<usize>,
}

impl Snapshot {
    /// The child SA whose inbound SPI is `spi`.
    #[inline]
    pub fn inbound(&self, spi: u32) -> Option<&Child> {
        self.inbound.get(&spi)
    }

    /// The tunnel's current outbound SA.
    #[inline]
    pub fn outbound(&self, tunnel: &str) -> Option<&Arc<OutboundSa>> {
        self.outbound.get(tunnel).map(|(sa, _, _)| sa)
    }

    /// A tunnel's counters (kept across rekeys and re-establishments).
    pub fn tunnel_counters(&self, tunnel: &str) -> Option<&Arc<TunnelCounters>> {
        self.tunnels.get(tunnel)
    }

    /// Drops not attributable to any SA.
    pub fn node_drops(&self) -> &DropCounters {
        &self.node_drops
    }

    /// Every installed child SA, in no particular order.
    pub fn children(&self) -> impl Iterator<Item = &Child> {
        self.inbound.values()
    }

    pub fn len(&self) -> usize {
        self.inbound.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inbound.is_empty()
    }

    /// Looks up the SA by the packet's SPI, decrypts `packet` (raw ESP or
    /// the UDP payload of ESP-in-UDP) in place and counts the outcome: the
    /// SA's and the tunnel's traffic, or the drop (per SA and tunnel when
    /// the SA is known, per node otherwise).
    pub fn decrypt(&self, packet: &mut [u8]) -> Result<Received<'_>, DropReason> {
        let hdr = match EspHeader::parse(packet) {
            Ok(h) => h,
            Err(e) => return Err(self.node_drop(e.into())),
        };
        let Some(child) = self.inbound.get(&hdr.spi) else {
            return Err(self.node_drop(DropReason::EspUnknownSpi));
        };
        match child.inbound.decrypt(packet) {
            Ok(d) => {
                let bytes = d.inner.len() as u64;
                child.inbound.counters().traffic.add(1, bytes);
                child.tunnel.rx.add(1, bytes);
                Ok(Received {
                    child,
                    decrypted: d,
                })
            }
            Err(e) => {
                let r = DropReason::from(e);
                child.inbound.counters().drops.add(r);
                child.tunnel.drops.add(r);
                Err(r)
            }
        }
    }

    /// Encrypts the inner packet at `buf[inner]` with `tunnel`'s current
    /// outbound SA (see [`OutboundSa::encrypt`] for the buffer layout) and
    /// counts the outcome.
    pub fn encrypt(
        &self,
        tunnel: &str,
        buf: &mut [u8],
        inner: Range<usize>,
    ) -> Result<Sent<'_>, DropReason> {
        let Some((sa, counters, to)) = self.outbound.get(tunnel) else {
            let r = DropReason::EspNoSa;
            match self.tunnels.get(tunnel) {
                Some(t) => t.drops.add(r),
                None => self.node_drops.add(r),
            }
            return Err(r);
        };
        let bytes = inner.len() as u64;
        match sa.encrypt(buf, inner) {
            Ok(esp) => {
                sa.counters().traffic.add(1, bytes);
                counters.tx.add(1, bytes);
                Ok(Sent { sa, esp, to: *to })
            }
            Err(e) => {
                let r = DropReason::from(e);
                sa.counters().drops.add(r);
                counters.drops.add(r);
                Err(r)
            }
        }
    }

    fn node_drop(&self, r: DropReason) -> DropReason {
        self.node_drops.add(r);
        r
    }

    /// Points `tunnel`'s outbound at its newest child SA, or at none.
    fn elect_outbound(&mut self, tunnel: &Arc<str>) {
        let newest = self
            .inbound
            .values()
            .filter(|c| c.inbound.info().tunnel == *tunnel)
            .max_by_key(|c| c.order)
            .map(|c| (c.outbound.clone(), c.tunnel.clone(), c.remote));
        match newest {
            Some(o) => {
                self.outbound.insert(tunnel.clone(), o);
            }
            None => {
                self.outbound.remove(tunnel);
            }
        }
    }

    /// Removes the children `remove` selects; re-elects their tunnels'
    /// outbound SAs. Returns how many.
    fn remove_where(&mut self, remove: impl Fn(&Child) -> bool) -> usize {
        let gone: Vec<u32> = self
            .inbound
            .iter()
            .filter(|(_, c)| remove(c))
            .map(|(&spi, _)| spi)
            .collect();
        let mut tunnels: Vec<Arc<str>> = Vec::new();
        for spi in &gone {
            if let Some(c) = self.inbound.remove(spi) {
                let t = c.inbound.info().tunnel.clone();
                if !tunnels.contains(&t) {
                    tunnels.push(t);
                }
            }
        }
        for t in &tunnels {
            self.elect_outbound(t);
        }
        gone.len()
    }
}

/// The node's SA database. Share it as `Arc<Sad>`: workers read through
/// [`Sad::read`] / [`Sad::snapshot`], the control thread (and later the SA
/// bus) writes through [`Sad::handle_event`].
pub struct Sad {
    config: SadConfig,
    current: ArcSwap<Snapshot>,
    /// Serialises writers (held while one builds the next snapshot); the
    /// install counter lives under it.
    writer: Mutex<u64>,
}

impl std::fmt::Debug for Sad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sad")
            .field("config", &self.config)
            .field("current", &**self.current.load())
            .finish()
    }
}

impl Sad {
    /// An empty database.
    pub fn new(config: SadConfig) -> Sad {
        Sad {
            config,
            current: ArcSwap::from_pointee(Snapshot::default()),
            writer: Mutex::new(0),
        }
    }

    pub fn config(&self) -> SadConfig {
        self.config
    }

    /// Runs `f` on the current snapshot without touching a reference count:
    /// the per-packet read.
    #[inline]
    pub fn read<R>(&self, f: impl FnOnce(&Snapshot) -> R) -> R {
        f(&self.current.load())
    }

    /// The current snapshot, to hold for a batch of packets. A held snapshot
    /// keeps deleted SAs alive (and usable) until it is dropped.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn len(&self) -> usize {
        self.current.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.current.load().is_empty()
    }

    /// Whether a child SA with inbound SPI `spi_in` is installed.
    pub fn contains(&self, spi_in: u32) -> bool {
        self.current.load().inbound.contains_key(&spi_in)
    }

    /// Applies one IKE event at `now`.
    pub fn handle_event(&self, now: Instant, event: Event) -> Change {
        match event {
            Event::ChildSaEstablished(child) => {
                let spi_in = child.spi_in;
                match self.install(now, &child) {
                    Ok(replaced) => Change::Installed { spi_in, replaced },
                    Err(error) => Change::Refused { spi_in, error },
                }
            }
            Event::ChildSaDeleted { spi_in, .. } => {
                Change::Removed(usize::from(self.remove(spi_in)))
            }
            // RFC 7296 §1.4.1: deleting an IKE SA closes its child SAs.
            Event::IkeSaDeleted { info, .. } | Event::IkeSaFailed { info, .. } => {
                Change::Removed(self.remove_ike_sa(info.handle))
            }
            // The children live on under the new IKE SA (RFC 7296 §2.18);
            // the old one's IkeSaDeleted then finds none left to remove.
            Event::IkeSaRekeyed { old, new } => Change::Moved(self.move_ike_sa(old, new.handle)),
            // The peer's NAT mapping changed (RFC 7296 §2.23): its ESP goes
            // to the new address.
            Event::IkeSaMoved {
                handle,
                local,
                remote,
            } => Change::Moved(self.readdress(handle, local, remote)),
            // IkeSaUpdated: takeover state for the bus, nothing for the SAD.
            Event::IkeSaEstablished(_) | Event::ChildSaFailed { .. } | Event::IkeSaUpdated(_) => {
                Change::None
            }
        }
    }

    /// Builds a new snapshot from the current one with `f` and publishes it.
    fn update<R>(&self, f: impl FnOnce(&mut Snapshot, &mut u64) -> R) -> R {
        let mut order = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = Snapshot::clone(&self.current.load());
        let r = f(&mut next, &mut order);
        self.current.store(Arc::new(next));
        r
    }

    /// Installs `child`; its outbound SA becomes its tunnel's. Returns
    /// whether one with the same inbound SPI was there (see
    /// [`Change::Installed`]).
    pub fn install(&self, now: Instant, child: &ChildSa) -> Result<bool, SaError> {
        // Key expansion happens outside the writer lock.
        let info = Arc::new(SaInfo::of_child(child, now));
        let inbound = Arc::new(InboundSa::new(
            child,
            self.config.replay_window,
            info.clone(),
        )?);
        let outbound = Arc::new(OutboundSa::new(child, self.config.node_index, info)?);
        Ok(self.update(|snap, order| {
            let same = snap
                .inbound
                .get(&child.spi_in)
                .map(|old| old.outbound.spi() == child.spi_out);
            if same == Some(true) {
                // The same SA again (a replicated record re-written, e.g.
                // moved to the new IKE SA of a rekey): keys, counters and
                // replay window stay; only its IKE SA follows.
                if let Some(c) = snap.inbound.get_mut(&child.spi_in) {
                    c.ike = child.ike;
                }
                return true;
            }
            *order += 1;
            let tunnel = snap
                .tunnels
                .entry(child.tunnel.clone())
                .or_default()
                .clone();
            let tunnel_counters = tunnel.clone();
            snap.inbound.insert(
                child.spi_in,
                Child {
                    inbound,
                    outbound: outbound.clone(),
                    ike: child.ike,
                    tunnel,
                    local: child.local,
                    remote: child.remote,
                    order: *order,
                },
            );
            snap.outbound.insert(
                child.tunnel.clone(),
                (outbound, tunnel_counters, child.remote),
            );
            same.is_some()
        }))
    }

    /// Removes the child SA with inbound SPI `spi_in`; if it carried its
    /// tunnel's outbound traffic, the tunnel's newest remaining SA takes
    /// over. Returns whether there was one.
    pub fn remove(&self, spi_in: u32) -> bool {
        self.update(|snap, _| snap.remove_where(|c| c.inbound.spi() == spi_in) == 1)
    }

    /// Removes every child SA negotiated under the IKE SA `ike`; returns how
    /// many.
    pub fn remove_ike_sa(&self, ike: IkeSaHandle) -> usize {
        self.update(|snap, _| snap.remove_where(|c| c.ike == ike))
    }

    /// Points every child SA of IKE SA `ike` at new outer addresses; returns
    /// how many.
    pub fn readdress(&self, ike: IkeSaHandle, local: SocketAddr, remote: SocketAddr) -> usize {
        self.update(|snap, _| {
            let mut n = 0;
            let mut tunnels: Vec<Arc<str>> = Vec::new();
            for c in snap.inbound.values_mut().filter(|c| c.ike == ike) {
                c.local = local;
                c.remote = remote;
                n += 1;
                let t = &c.inbound.info().tunnel;
                if !tunnels.contains(t) {
                    tunnels.push(t.clone());
                }
            }
            // The outbound entries carry the address too.
            for t in &tunnels {
                snap.elect_outbound(t);
            }
            n
        })
    }

    /// Re-parents every child SA of IKE SA `old` to `new`; returns how many.
    pub fn move_ike_sa(&self, old: IkeSaHandle, new: IkeSaHandle) -> usize {
        self.update(|snap, _| {
            let mut n = 0;
            for c in snap.inbound.values_mut().filter(|c| c.ike == old) {
                c.ike = new;
                n += 1;
            }
            n
        })
    }

    /// Every installed child SA, by inbound SPI, without keys.
    pub fn list(&self) -> Vec<SaSummary> {
        let snap = self.current.load();
        let mut v: Vec<SaSummary> = snap
            .inbound
            .values()
            .map(|c| {
                let i = c.inbound.info();
                SaSummary {
                    tunnel: i.tunnel.clone(),
                    ike: c.ike,
                    spi_in: i.spi_in,
                    spi_out: i.spi_out,
                    proposal: i.proposal.to_string(),
                    local_ts: i.local_ts.clone(),
                    remote_ts: i.remote_ts.clone(),
                    local: c.local,
                    remote: c.remote,
                    encap: i.encap,
                    lifetime: i.lifetime,
                    installed_at: i.installed_at,
                }
            })
            .collect();
        v.sort_by_key(|s| s.spi_in);
        v
    }

    /// Inbound and outbound counters of the child SA `spi_in`.
    pub fn sa_counters(&self, spi_in: u32) -> Option<(CountersSnapshot, CountersSnapshot)> {
        let snap = self.current.load();
        let c = snap.inbound.get(&spi_in)?;
        Some((
            c.inbound.counters().snapshot(),
            c.outbound.counters().snapshot(),
        ))
    }

    /// Tunnels whose outbound SA passed its soft limit (or is used up) and
    /// needs a rekey, with the inbound SPI that names the child SA to IKE.
    pub fn rekey_due(&self) -> Vec<(Arc<str>, u32)> {
        let snap = self.current.load();
        let mut v: Vec<(Arc<str>, u32)> = snap
            .outbound
            .iter()
            .filter(|(_, (o, _, _))| o.rekey_due())
            .map(|(t, (o, _, _))| (t.clone(), o.info().spi_in))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esp::IpVersion;
    use anyhub_crypto::{Rng, Secret, SeededRng};
    use anyhub_ike::proposal::{EncrAlg, Selected};
    use anyhub_ike::wire::registry::{EncrId, ProtocolId};
    use anyhub_ike::{ts, DirectionKeys, IkeSaInfo, IkeState, SaEndReason};

    /// A recognisable key byte, to prove it never shows up in any output.
    const KEY_BYTE: u8 = 0xa7;

    /// A child SA whose keys are derived from its SPIs, so the peer's view
    /// (`mirror`) has matching keys.
    fn child(ike: u64, spi_in: u32, spi_out: u32) -> ChildSa {
        let keys = |spi: u32| {
            let mut k = vec![KEY_BYTE; 36];
            k[..4].copy_from_slice(&spi.to_be_bytes());
            DirectionKeys {
                encr: Secret::new(k),
                integ: None,
            }
        };
        ChildSa {
            tunnel: Arc::from("site-a"),
            ike: IkeSaHandle(ike),
            spi_in,
            spi_out,
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
                peer_spi: spi_out.to_be_bytes().to_vec(),
            },
            keys_in: keys(spi_in),
            keys_out: keys(spi_out),
            local_ts: vec![ts::parse("10.20.0.0/24").unwrap()],
            remote_ts: vec![ts::parse("10.10.0.0/24").unwrap()],
            lifetime: Duration::from_secs(3600),
            local: "198.51.100.1:4500".parse().unwrap(),
            remote: "203.0.113.7:4500".parse().unwrap(),
            encap: true,
            rekey_of: None,
        }
    }

    fn mirror(c: &ChildSa) -> ChildSa {
        let mut m = c.clone();
        m.spi_in = c.spi_out;
        m.spi_out = c.spi_in;
        std::mem::swap(&mut m.keys_in, &mut m.keys_out);
        m
    }

    fn ike_info(handle: u64) -> IkeSaInfo {
        IkeSaInfo {
            handle: IkeSaHandle(handle),
            tunnel: Some(Arc::from("site-a")),
            spi_i: 1,
            spi_r: 2,
            initiator: false,
            state: IkeState::Established,
            local: "198.51.100.1:4500".parse().unwrap(),
            remote: "203.0.113.7:4500".parse().unwrap(),
            remote_id: None,
            proposal: None,
            established_at: None,
        }
    }

    fn sad() -> Sad {
        Sad::new(SadConfig::new(1))
    }

    fn established(c: ChildSa) -> Event {
        Event::ChildSaEstablished(Box::new(c))
    }

    fn deleted(spi_in: u32) -> Event {
        Event::ChildSaDeleted {
            tunnel: Arc::from("site-a"),
            ike: IkeSaHandle(1),
            spi_in,
            spi_out: 0,
        }
    }

    /// The peer: a second database holding the mirrored SA, to produce
    /// packets for us and open ours.
    fn peer_of(c: &ChildSa) -> Sad {
        let p = Sad::new(SadConfig::new(2));
        p.install(Instant::now(), &mirror(c)).unwrap();
        p
    }

    fn packet(peer: &Sad, tunnel: &str, fill: u8) -> Vec<u8> {
        let mut buf = vec![fill; 16 + 40 + 40];
        buf[16] = 0x45;
        let r = peer.read(|s| s.encrypt(tunnel, &mut buf, 16..56).map(|s| s.esp));
        let r = r.unwrap();
        buf[r].to_vec()
    }

    #[test]
    fn install_list_and_delete_by_spi() {
        let now = Instant::now();
        let t = sad();
        assert!(t.is_empty());
        let c = established(child(1, 0x0010_0002, 0xc6f2_a1b0));
        assert_eq!(
            t.handle_event(now, c),
            Change::Installed {
                spi_in: 0x0010_0002,
                replaced: false
            }
        );
        t.handle_event(now, established(child(1, 0x0010_0001, 0xc6f2_a1b1)));
        assert_eq!(t.len(), 2);

        let list = t.list();
        assert_eq!(
            list.iter().map(|s| s.spi_in).collect::<Vec<_>>(),
            [0x0010_0001, 0x0010_0002]
        );
        assert_eq!(list[0].spi_out, 0xc6f2_a1b1);
        assert_eq!(list[0].proposal, "aes256gcm16");
        assert_eq!(&*list[0].tunnel, "site-a");
        assert_eq!(list[0].installed_at, now);
        assert_eq!(ts::display(&list[0].remote_ts[0]), "10.10.0.0/24");

        assert_eq!(
            t.handle_event(now, deleted(0x0010_0001)),
            Change::Removed(1)
        );
        assert!(!t.contains(0x0010_0001));
        assert!(t.contains(0x0010_0002));
        // A second DELETE for the same SA (retransmission) is harmless.
        assert_eq!(
            t.handle_event(now, deleted(0x0010_0001)),
            Change::Removed(0)
        );
    }

    #[test]
    fn ike_sa_end_removes_its_children_only() {
        let now = Instant::now();
        let t = sad();
        t.install(now, &child(1, 0x0010_0001, 0xa001)).unwrap();
        t.install(now, &child(1, 0x0010_0002, 0xa002)).unwrap();
        t.install(now, &child(2, 0x0010_0003, 0xa003)).unwrap();

        let ev = Event::IkeSaDeleted {
            info: ike_info(1),
            reason: SaEndReason::DeletedByPeer,
        };
        assert_eq!(t.handle_event(now, ev), Change::Removed(2));
        assert_eq!(
            t.list().iter().map(|s| s.spi_in).collect::<Vec<_>>(),
            [0x0010_0003]
        );
        // The tunnel's outbound is the survivor's.
        assert_eq!(
            t.read(|s| s.outbound("site-a").map(|o| o.spi())),
            Some(0xa003)
        );

        let ev = Event::IkeSaFailed {
            info: ike_info(2),
            reason: SaEndReason::Timeout,
        };
        assert_eq!(t.handle_event(now, ev), Change::Removed(1));
        assert!(t.is_empty());
        assert!(t.read(|s| s.outbound("site-a").is_none()));
    }

    #[test]
    fn ike_sa_rekey_moves_children() {
        let now = Instant::now();
        let t = sad();
        t.install(now, &child(1, 0x0010_0001, 0xa001)).unwrap();
        t.install(now, &child(2, 0x0010_0002, 0xa002)).unwrap();
        let ev = Event::IkeSaRekeyed {
            old: IkeSaHandle(1),
            new: ike_info(3),
        };
        assert_eq!(t.handle_event(now, ev), Change::Moved(1));
        // The old IKE SA's delete now finds nothing.
        let ev = Event::IkeSaDeleted {
            info: ike_info(1),
            reason: SaEndReason::Rekeyed,
        };
        assert_eq!(t.handle_event(now, ev), Change::Removed(0));
        assert_eq!(t.list()[0].ike, IkeSaHandle(3));
        assert_eq!(t.remove_ike_sa(IkeSaHandle(3)), 1);
    }

    /// A child SA rekey (RFC 7296 §2.8): outbound switches to the new SA at
    /// once; the old inbound SA still opens the peer's packets until its
    /// ChildSaDeleted.
    #[test]
    fn a_moved_peer_takes_its_children_along() {
        let now = Instant::now();
        let t = sad();
        t.install(now, &child(1, 0x0010_0001, 0xa001)).unwrap();
        t.install(now, &child(2, 0x0010_0002, 0xa002)).unwrap();
        let to: SocketAddr = "203.0.113.9:24500".parse().unwrap();
        let ev = Event::IkeSaMoved {
            handle: IkeSaHandle(1),
            local: "198.51.100.1:4500".parse().unwrap(),
            remote: to,
        };
        assert_eq!(t.handle_event(now, ev), Change::Moved(1));
        let list = t.list();
        let moved: Vec<_> = list
            .iter()
            .filter(|s| s.remote == to)
            .map(|s| s.spi_in)
            .collect();
        assert_eq!(moved, vec![0x0010_0001], "only IKE SA 1's child moved");
        // Outbound ESP follows the tunnel's newest SA (IKE SA 2's, not
        // moved); once that is gone, IKE SA 1's, to the new address.
        let dest = |t: &Sad| {
            let mut buf = vec![0u8; 200];
            buf[64] = 0x45;
            t.read(|s| s.encrypt("site-a", &mut buf, 64..148).map(|x| x.to))
                .unwrap()
        };
        assert_eq!(dest(&t), "203.0.113.7:4500".parse().unwrap());
        t.remove(0x0010_0002);
        assert_eq!(dest(&t), to);
    }

    #[test]
    fn child_rekey_is_make_before_break() {
        let now = Instant::now();
        let t = sad();
        let old = child(1, 0x0010_0001, 0xa001);
        t.install(now, &old).unwrap();
        let peer_old = peer_of(&old);
        // Traffic on the old SA, both ways.
        let mut p = packet(&peer_old, "site-a", 1);
        t.read(|s| s.decrypt(&mut p).map(|r| r.child.inbound.spi()))
            .unwrap();
        let mut mine = packet(&t, "site-a", 2);
        assert_eq!(&mine[..4], &0xa001u32.to_be_bytes());
        peer_old.read(|s| s.decrypt(&mut mine).map(|_| ())).unwrap();

        let mut new = child(1, 0x0010_0002, 0xa002);
        new.rekey_of = Some(0x0010_0001);
        assert_eq!(
            t.handle_event(now, established(new.clone())),
            Change::Installed {
                spi_in: 0x0010_0002,
                replaced: false
            }
        );
        // Outbound uses the new SA at once.
        let mine = packet(&t, "site-a", 3);
        assert_eq!(&mine[..4], &0xa002u32.to_be_bytes());
        // The peer has not switched yet: its old-SA packets still open.
        let mut p = packet(&peer_old, "site-a", 4);
        let spi = t.read(|s| s.decrypt(&mut p).map(|r| r.child.inbound.spi()));
        assert_eq!(spi, Ok(0x0010_0001));
        // And its new-SA packets too.
        let peer_new = peer_of(&new);
        let mut p = packet(&peer_new, "site-a", 5);
        let spi = t.read(|s| s.decrypt(&mut p).map(|r| r.child.inbound.spi()));
        assert_eq!(spi, Ok(0x0010_0002));

        // Delete of the old SA: its packets are now unknown.
        assert_eq!(
            t.handle_event(now, deleted(0x0010_0001)),
            Change::Removed(1)
        );
        let mut p = packet(&peer_old, "site-a", 6);
        assert_eq!(
            t.read(|s| s.decrypt(&mut p).map(|_| ())),
            Err(DropReason::EspUnknownSpi)
        );
        assert_eq!(
            t.read(|s| s.outbound("site-a").map(|o| o.spi())),
            Some(0xa002)
        );
        // Tunnel counters survived the rekey: 3 received, 2 sent.
        let c = t.read(|s| s.tunnel_counters("site-a").unwrap().clone());
        assert_eq!((c.rx.packets(), c.tx.packets()), (3, 2));
        assert_eq!(t.read(|s| s.node_drops().get(DropReason::EspUnknownSpi)), 1);
    }

    /// Deleting the new SA (e.g. a collided rekey lost) hands outbound back
    /// to the older one.
    #[test]
    fn deleting_the_newest_falls_back() {
        let now = Instant::now();
        let t = sad();
        t.install(now, &child(1, 0x0010_0001, 0xa001)).unwrap();
        t.install(now, &child(1, 0x0010_0002, 0xa002)).unwrap();
        assert!(t.remove(0x0010_0002));
        assert_eq!(
            t.read(|s| s.outbound("site-a").map(|o| o.spi())),
            Some(0xa001)
        );
    }

    /// The same SA delivered twice keeps its state: the replay window does
    /// not forget, the IV counter does not restart (IV reuse).
    #[test]
    fn reinstalling_the_same_sa_keeps_its_state() {
        let now = Instant::now();
        let t = sad();
        let c = child(1, 0x0010_0001, 0xa001);
        t.install(now, &c).unwrap();
        let peer = peer_of(&c);
        let p = packet(&peer, "site-a", 1);
        t.read(|s| s.decrypt(&mut p.clone()).map(|_| ())).unwrap();
        let sent = packet(&t, "site-a", 2);

        assert_eq!(
            t.handle_event(now, established(c.clone())),
            Change::Installed {
                spi_in: 0x0010_0001,
                replaced: true
            }
        );
        assert_eq!(
            t.read(|s| s.decrypt(&mut p.clone()).map(|_| ())),
            Err(DropReason::EspReplay)
        );
        let again = packet(&t, "site-a", 2);
        assert_ne!(&sent[8..16], &again[8..16], "IV reused after reinstall");

        // Same inbound SPI, different outbound SPI: a different SA, replaced.
        assert!(t.install(now, &child(1, 0x0010_0001, 0xb001)).unwrap());
        assert_eq!(t.len(), 1);
        assert_eq!(t.list()[0].spi_out, 0xb001);
    }

    #[test]
    fn refused_sas_install_nothing() {
        let t = sad();
        let mut c = child(1, 0x0010_0001, 0xa001);
        c.keys_out.encr = Secret::new(vec![0; 5]);
        assert_eq!(
            t.handle_event(Instant::now(), established(c)),
            Change::Refused {
                spi_in: 0x0010_0001,
                error: SaError::BadKeyLength
            }
        );
        assert!(t.is_empty());
    }

    #[test]
    fn drops_are_counted_where_they_belong() {
        let now = Instant::now();
        let t = sad();
        let c = child(1, 0x0010_0001, 0xa001);
        t.install(now, &c).unwrap();
        let peer = peer_of(&c);
        let good = packet(&peer, "site-a", 1);
        let mut bad = good.clone();
        bad[30] ^= 1;
        let snap = t.snapshot();
        assert_eq!(
            snap.decrypt(&mut bad).map(|_| ()),
            Err(DropReason::EspAuthFailed)
        );
        assert!(snap.decrypt(&mut good.clone()).is_ok());
        assert_eq!(
            snap.decrypt(&mut good.clone()).map(|_| ()),
            Err(DropReason::EspReplay)
        );
        assert_eq!(
            snap.decrypt(&mut [1, 2, 3]).map(|_| ()),
            Err(DropReason::EspMalformed)
        );
        let mut buf = [0u8; 100];
        assert_eq!(
            snap.encrypt("site-b", &mut buf, 16..40).map(|_| ()),
            Err(DropReason::EspNoSa)
        );
        let (inb, _) = t.sa_counters(0x0010_0001).unwrap();
        assert_eq!(inb.packets, 1);
        assert_eq!(inb.bytes, 40);
        assert_eq!(
            inb.drops,
            [(DropReason::EspReplay, 1), (DropReason::EspAuthFailed, 1)]
        );
        let tc = snap.tunnel_counters("site-a").unwrap();
        assert_eq!(tc.drops.total(), 2);
        assert_eq!(tc.rx.bytes(), 40);
        assert_eq!(
            snap.node_drops().nonzero(),
            [(DropReason::EspMalformed, 1), (DropReason::EspNoSa, 1)]
        );
    }

    #[test]
    fn rekey_due_names_the_tunnel() {
        let t = sad();
        t.install(Instant::now(), &child(1, 0x0010_0001, 0xa001))
            .unwrap();
        assert!(t.rekey_due().is_empty());
        t.read(|s| {
            s.outbound("site-a")
                .unwrap()
                .advance_to(u64::from(u32::MAX) - 5)
        });
        assert_eq!(t.rekey_due(), [(Arc::from("site-a"), 0x0010_0001)]);
    }

    /// Workers decrypt and encrypt while the writer installs, rekeys and
    /// deletes: no packet of a live SA is lost to the switch, and every
    /// outcome is an accepted packet or a counted drop.
    #[test]
    fn readers_run_during_writes() {
        // A window wide enough that the two workers may drift apart.
        let t = Arc::new(Sad::new(SadConfig {
            node_index: 1,
            replay_window: 65536,
        }));
        let base = child(1, 0x0010_0001, 0xa001);
        t.install(Instant::now(), &base).unwrap();
        let peer = peer_of(&base);
        // 4000 packets on the long-lived SA, split between two workers.
        let packets: Vec<Vec<u8>> = (0..4000)
            .map(|i| packet(&peer, "site-a", i as u8))
            .collect();
        let (a, b): (Vec<_>, Vec<_>) = packets
            .into_iter()
            .enumerate()
            .partition(|(i, _)| i % 2 == 0);
        let workers: Vec<_> = [a, b]
            .into_iter()
            .map(|ps| {
                let t = t.clone();
                std::thread::spawn(move || {
                    let mut ok = 0;
                    for (_, mut p) in ps {
                        let r = t.read(|s| s.decrypt(&mut p).map(|r| r.decrypted.version));
                        if r == Ok(IpVersion::V4) {
                            ok += 1;
                        }
                        // Outbound keeps working through every switch.
                        let mut buf = [0u8; 100];
                        buf[16] = 0x45;
                        t.read(|s| s.encrypt("site-a", &mut buf, 16..56).map(|_| ()))
                            .unwrap();
                    }
                    ok
                })
            })
            .collect();
        let mut rng = SeededRng::new(3);
        for i in 0..300u32 {
            let mut b = [0u8; 4];
            rng.fill(&mut b);
            let spi = 0x0020_0000 | (u32::from_le_bytes(b) & 0xffff);
            let mut c = child(1, spi, 0xb000 + i);
            c.rekey_of = Some(spi);
            t.install(Instant::now(), &c).unwrap();
            if i % 3 == 0 {
                t.remove(spi);
            }
        }
        let ok: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
        assert_eq!(ok, 4000, "a packet of the live SA was lost");
    }

    #[test]
    fn keys_never_show() {
        let t = sad();
        t.install(Instant::now(), &child(1, 0x0010_0001, 0xa001))
            .unwrap();
        // The key is mostly 0xa7: any rendering of it repeats the byte.
        let leaks = [
            format!("{KEY_BYTE}, {KEY_BYTE}"),
            format!("{KEY_BYTE:02x}{KEY_BYTE:02x}"),
        ];
        let dbg = format!("{t:?}");
        assert!(dbg.contains("AeadKey"), "{dbg}");
        for out in [dbg, format!("{t:#?}"), format!("{:?}", t.list())] {
            assert!(!leaks.iter().any(|l| out.contains(l)), "key leaked: {out}");
        }
    }

    #[test]
    fn hasher_spreads_spis() {
        use std::hash::BuildHasher;
        let b = FastHash::default();
        let mut low = std::collections::HashSet::new();
        for node in 1..=16u32 {
            for r in 0..64u32 {
                low.insert(b.hash_one(node << 20 | r) & 0x3ff);
            }
        }
        // 1024 keys into 1024 buckets: most buckets distinct.
        assert!(low.len() > 600, "{}", low.len());
    }
}
