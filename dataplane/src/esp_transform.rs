//! The ESP dataplane as a [`PacketTransform`]: what runs between the
//! node's TUN device (its local side) and the shared NAT-T socket.
//!
//! ```text
//!  outbound  TUN packet ─► path::Forwarder (Ingress::Local): tenant route
//!            → tunnel → its selectors → MTU (ICMP Frag Needed / PTB back
//!            into the TUN) → MSS clamp ─► Snapshot::encrypt (the tunnel's
//!            newest SA) ─► ESP-in-UDP to the SA's peer address now
//!  inbound   UDP/4500 datagram ─► esp::udp::classify (RFC 3948):
//!              00 00 00 00 | IKE  → the IKE sink (bounded; full: counted)
//!              0xFF               → NAT keepalive, counted
//!              ESP                → Snapshot::decrypt (SPI, replay, ICV)
//!            → the SA's own selectors (RFC 4301 §5.2) → path::Forwarder
//!            (Ingress::Tunnel): route → TUN, or re-encrypted into another
//!            tunnel of the tenant
//! ```
//!
//! Nothing here duplicates the parts it strings together: the SA database
//! ([`Sad`]) holds the SAs and their counters, [`crate::path::Forwarder`]
//! does selectors, routes, TTL, MTU and MSS, [`crate::esp::udp`] the
//! demultiplexing.
//!
//! **The route table** of the local tenant is derived from the installed
//! child SAs ([`EspDataplane::refresh`], called by the node after every SA
//! change): each tunnel's remote selectors route to it, its local selectors
//! and the defaults (`0.0.0.0/0`, `::/0`) to the local side, first come
//! first served when two tunnels claim the same prefix. Like strongSwan's
//! installed routes, only addresses are routed; ports and protocols are
//! the selectors' business.
//!
//! **Threads.** One [`EspDataplane`] is shared by every queue; each queue
//! gets its own [`EspTransform`], which holds one [`crate::path::Forwarder`]
//! (ICMP token bucket, scratch) per direction behind a mutex only that
//! direction's thread takes, so the locks are never contended.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::counters::{DropCounters, DropReason};
use crate::esp::udp::{classify, Natt, NON_ESP_MARKER};
use crate::esp_raw::RawEsp;
use crate::gre_side::GreSide;
use crate::icmp_error::TokenBucket;
use crate::io::{PacketTransform, Verdict};
use crate::mss::{Encap, EspCipher, MssClamp};
use crate::path::{self, Ingress, Selectors, TunnelPath, TunnelTable};
use crate::policy::{flow_allowed, Direction, Flow};
use crate::published::{Published, Reader};
use crate::route::{Prefix, Target, TenantId, TenantSpec, Tenants, TunnelId};
use crate::sad::SpiHasher;
use crate::Sad;

/// The largest ESP header + IV any transform writes before the inner
/// packet (AES-CBC: SPI 4, Seq 4, IV 16).
pub const MAX_HEADROOM: usize = 8 + 16;
/// The largest padding + trailer + ICV after it (AES-CBC padding 15, Pad
/// Length and Next Header 2, HMAC-SHA-512-256 ICV 32).
pub const MAX_TAILROOM: usize = 15 + 2 + 32;
/// The name of the one tenant the local side serves.
pub const LOCAL_TENANT: &str = "local";
/// At most this many prefixes per selector become routes (a range that
/// needs more is not routed; the selector still applies).
const MAX_PREFIXES_PER_TS: usize = 64;

/// Hands an IKE message that arrived on the NAT-T socket (marker removed)
/// to the IKE driver: `(local, remote, message)`; `false` when its queue
/// is full (the message is dropped and counted).
pub type IkeSink = Box<dyn Fn(SocketAddr, SocketAddr, &[u8]) -> bool + Send + Sync>;

/// Configuration of the ESP dataplane.
#[derive(Clone, Debug)]
pub struct EspDataplaneConfig {
    /// The node's tunnels by name, in config order (their [`TunnelId`]s).
    pub tunnels: Vec<Arc<str>>,
    /// The outer path MTU the tunnels' inner MTU and MSS clamp are
    /// computed from ([`Encap::inner_mtu`]).
    pub path_mtu: usize,
    /// The node's GRE tunnels, if any: their [`TunnelId`]s follow the ESP
    /// tunnels', their configured routes join the table.
    pub gre: Option<Arc<GreSide>>,
    /// The raw ESP socket (IP protocol 50) for SAs without UDP
    /// encapsulation; without it such SAs' packets are dropped
    /// (`esp_not_encapsulated`).
    pub raw_esp: Option<Arc<RawEsp>>,
}

/// Counters of the dataplane itself (the SAs' and tunnels' are in the
/// [`Sad`]).
#[derive(Debug, Default)]
pub struct EspDataplaneCounters {
    /// IKE messages handed to the IKE driver.
    pub ike_to_driver: AtomicU64,
    /// Inner packets written to the local side.
    pub to_local: AtomicU64,
    /// Packets forwarded from one tunnel into another.
    pub tunnel_to_tunnel: AtomicU64,
    /// ICMP errors sent (Fragmentation Needed / Packet Too Big / Time
    /// Exceeded).
    pub icmp_errors: AtomicU64,
    /// TCP SYNs whose MSS option was lowered to the tunnel's clamp.
    pub mss_clamped: AtomicU64,
    /// Drops no SA or tunnel can be blamed for, by reason (NAT keepalives,
    /// no route from the local side, full IKE queue…). ESP drops before an
    /// SA is known are in the SAD's node drops.
    pub drops: DropCounters,
}

/// The derived forwarding state: tenants (one, the local side) and the
/// tunnels with installed SAs.
#[derive(Clone, Debug)]
struct PathState {
    tenants: Tenants,
    tunnels: TunnelTable,
    tenant: TenantId,
}

/// The ESP dataplane shared by every queue.
pub struct EspDataplane {
    sad: Arc<Sad>,
    config: EspDataplaneConfig,
    ids: HashMap<Arc<str>, TunnelId, std::hash::BuildHasherDefault<SpiHasher>>,
    paths: Arc<Published<PathState>>,
    ike: IkeSink,
    pub counters: EspDataplaneCounters,
}

impl std::fmt::Debug for EspDataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EspDataplane")
            .field("config", &self.config)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// What [`EspDataplane::refresh`] built.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    /// `(prefix, tunnel name)` of every route into a tunnel.
    pub tunnels: Vec<(Prefix, Arc<str>)>,
    /// Selectors no route could be made for (too many prefixes, or a
    /// prefix another tunnel claimed first).
    pub skipped: usize,
}

impl EspDataplane {
    pub fn new(sad: Arc<Sad>, config: EspDataplaneConfig, ike: IkeSink) -> Arc<EspDataplane> {
        let ids = config
            .tunnels
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), TunnelId(i as u32)))
            .collect();
        let empty = build_state(&[], &[], None).0;
        let dp = Arc::new(EspDataplane {
            sad,
            config,
            ids,
            paths: Arc::new(Published::new(empty)),
            ike,
            counters: EspDataplaneCounters::default(),
        });
        dp.refresh();
        dp
    }

    /// The SA database it reads.
    pub fn sad(&self) -> &Arc<Sad> {
        &self.sad
    }

    /// Rebuilds the route table and the tunnels' path facts from the
    /// installed child SAs and publishes them (workers pick them up at
    /// their next packet). Call after every change to the [`Sad`].
    pub fn refresh(&self) -> Routes {
        let snap = self.sad.snapshot();
        // Per tunnel: its SAs' selectors (union) and the smallest inner
        // MTU over them.
        let mut per: Vec<Option<TunnelPath>> = vec![None; self.config.tunnels.len()];
        let mut children: Vec<_> = snap.children().collect();
        // Newest first is not known here; order by SPI for determinism.
        children.sort_by_key(|c| c.inbound.spi());
        for c in &children {
            let info = c.inbound.info();
            let Some(&id) = self.ids.get(&info.tunnel) else {
                continue;
            };
            let Some(cipher) = EspCipher::for_proposal(&info.proposal) else {
                continue;
            };
            let mtu = Encap::Esp {
                cipher,
                udp: info.encap,
                outer_v6: c.remote.is_ipv6(),
            }
            .inner_mtu(self.config.path_mtu);
            let slot = &mut per[id.0 as usize];
            let t = slot.get_or_insert_with(|| TunnelPath {
                id,
                tenant: TenantId(0),
                inner_mtu: mtu,
                mss: Some(MssClamp::for_inner_mtu(mtu)),
                selectors: Selectors::default(),
                error_source: Default::default(),
            });
            if mtu < t.inner_mtu {
                t.inner_mtu = mtu;
                t.mss = Some(MssClamp::for_inner_mtu(mtu));
            }
            for ts in &info.local_ts {
                if !t.selectors.local.contains(ts) {
                    t.selectors.local.push(ts.clone());
                }
            }
            for ts in &info.remote_ts {
                if !t.selectors.remote.contains(ts) {
                    t.selectors.remote.push(ts.clone());
                }
            }
        }
        let paths: Vec<TunnelPath> = per.into_iter().flatten().collect();
        let (state, routes) = build_state(&paths, &self.config.tunnels, self.config.gre.as_deref());
        self.paths.publish(state);
        routes
    }

    /// A per-queue transform bound to the local address of its socket.
    pub fn transform(self: &Arc<Self>, local: SocketAddr) -> EspTransform {
        let worker = || {
            Mutex::new(Worker {
                fw: path::Forwarder::new(TokenBucket::default()),
                paths: self.paths.reader(),
                scratch: vec![0u8; 1500].into_boxed_slice(),
                reported: Default::default(),
            })
        };
        EspTransform {
            dp: self.clone(),
            local,
            out: worker(),
            inb: worker(),
        }
    }

    fn name(&self, id: TunnelId) -> Option<&Arc<str>> {
        self.config.tunnels.get(id.0 as usize)
    }

    /// The forwarding state of the GRE receive thread.
    pub fn gre_worker(&self) -> GreWorker {
        GreWorker(Worker {
            fw: path::Forwarder::new(TokenBucket::default()),
            paths: self.paths.reader(),
            scratch: vec![0u8; 1500].into_boxed_slice(),
            reported: Default::default(),
        })
    }

    /// Forwards `pkt`, an inner packet decapsulated from GRE tunnel `id`:
    /// route, TTL, MTU, MSS as for ESP. To the local side, or an ICMP
    /// error back into the tunnel; into an ESP tunnel is not forwarded
    /// yet (the GRE thread has no NAT-T socket): counted `tunnel_down`.
    pub fn from_gre(&self, w: &mut GreWorker, id: TunnelId, pkt: &mut [u8]) -> FromGre {
        let Worker {
            fw, paths, scratch, ..
        } = &mut w.0;
        let st = paths.current();
        let v = fw.forward(
            &st.tenants,
            &st.tunnels,
            Ingress::Tunnel {
                id,
                sa_selectors: None,
            },
            pkt,
            Instant::now(),
            scratch,
        );
        let r = match v {
            path::Verdict::Forward {
                target: Target::Local,
                ..
            } => {
                self.counters.to_local.fetch_add(1, Relaxed);
                FromGre::Local
            }
            path::Verdict::Forward {
                target: Target::Tunnel(to),
                ..
            } => match self.config.gre.as_ref().filter(|g| g.has(to)) {
                Some(g) => {
                    if g.send(to, pkt) {
                        self.counters.tunnel_to_tunnel.fetch_add(1, Relaxed);
                    }
                    FromGre::Done
                }
                None => FromGre::Drop(DropReason::TunnelDown),
            },
            path::Verdict::Reply { len, .. } => FromGre::Reply(scratch[..len].to_vec()),
            path::Verdict::Drop(d) => FromGre::Drop(d.into()),
        };
        w.0.report(&self.counters);
        r
    }
}

/// The GRE receive thread's forwarding state ([`EspDataplane::gre_worker`]).
pub struct GreWorker(Worker);

/// What [`EspDataplane::from_gre`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum FromGre {
    /// Write the packet into the TUN.
    Local,
    /// Send this ICMP error back into the tunnel the packet came from.
    Reply(Vec<u8>),
    /// Dropped; the caller counts it against the tunnel.
    Drop(DropReason),
    /// Already sent on (GRE to GRE).
    Done,
}

/// The prefixes that cover exactly a selector's address range (ports and
/// protocol aside), or `None` if that takes more than 64.
pub fn selector_prefixes(ts: &anyhub_ike::wire::TrafficSelector) -> Option<Vec<Prefix>> {
    crate::xfrm::child::range_to_prefixes(ts.start_addr, ts.end_addr, MAX_PREFIXES_PER_TS).map(
        |v| {
            v.into_iter()
                .filter_map(|n| Prefix::new(n.addr, n.len).ok())
                .collect()
        },
    )
}

/// The local tenant's routes and the tunnel table for `paths`.
fn build_state(
    paths: &[TunnelPath],
    names: &[Arc<str>],
    gre: Option<&GreSide>,
) -> (PathState, Routes) {
    let mut routes: Vec<(Prefix, Target)> = Vec::new();
    let mut taken = std::collections::HashSet::new();
    let mut out = Routes::default();
    let mut add = |p: Prefix, target: Target, routes: &mut Vec<(Prefix, Target)>| -> bool {
        if taken.insert(p) {
            routes.push((p, target));
            true
        } else {
            false
        }
    };
    let prefixes = selector_prefixes;
    for t in paths {
        for ts in &t.selectors.remote {
            match prefixes(ts) {
                Some(ps) => {
                    for p in ps {
                        if add(p, Target::Tunnel(t.id), &mut routes) {
                            out.tunnels.push((p, names[t.id.0 as usize].clone()));
                        } else {
                            out.skipped += 1;
                        }
                    }
                }
                None => out.skipped += 1,
            }
        }
    }
    // GRE tunnels' configured routes, after the ESP tunnels' selectors.
    for &(p, id) in gre.map(GreSide::routes).unwrap_or_default() {
        if !add(p, Target::Tunnel(id), &mut routes) {
            out.skipped += 1;
        }
    }
    for t in paths {
        for ts in &t.selectors.local {
            for p in prefixes(ts).unwrap_or_default() {
                add(p, Target::Local, &mut routes);
            }
        }
    }
    for d in [
        Prefix::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        Prefix::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    ]
    .into_iter()
    .flatten()
    {
        add(d, Target::Local, &mut routes);
    }
    let tenants = Tenants::build(&[TenantSpec {
        name: LOCAL_TENANT.into(),
        routes,
    }])
    .expect("one tenant, routes deduplicated");
    let mut tunnels = TunnelTable::new();
    for t in paths {
        tunnels.insert(t.clone());
    }
    for t in gre.map(GreSide::paths).unwrap_or_default() {
        tunnels.insert(t);
    }
    (
        PathState {
            tenants,
            tunnels,
            tenant: TenantId(0),
        },
        out,
    )
}

/// One direction's forwarding state.
struct Worker {
    fw: path::Forwarder,
    paths: Reader<PathState>,
    /// ICMP errors are built here.
    scratch: Box<[u8]>,
    /// The forwarder's counters already added to the shared ones.
    reported: path::ForwarderCounters,
}

impl Worker {
    fn report(&mut self, c: &EspDataplaneCounters) {
        let now = self.fw.counters;
        let sent = now.icmp_errors_sent - self.reported.icmp_errors_sent;
        if sent > 0 {
            c.icmp_errors.fetch_add(sent, Relaxed);
        }
        let clamped = now.mss_clamped - self.reported.mss_clamped;
        if clamped > 0 {
            c.mss_clamped.fetch_add(clamped, Relaxed);
        }
        self.reported = now;
    }
}

/// One queue's handle on the [`EspDataplane`].
pub struct EspTransform {
    dp: Arc<EspDataplane>,
    local: SocketAddr,
    out: Mutex<Worker>,
    inb: Mutex<Worker>,
}

fn lock(m: &Mutex<Worker>) -> std::sync::MutexGuard<'_, Worker> {
    // A panic in a worker cannot leave a Forwarder half-updated in a way
    // that matters (a token bucket, counters): carry on.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PacketTransform for EspTransform {
    fn headroom(&self) -> usize {
        MAX_HEADROOM
    }

    fn tailroom(&self) -> usize {
        MAX_TAILROOM
    }

    fn outbound(&self, buf: &mut [u8], inner_len: usize) -> Verdict {
        let dp = &*self.dp;
        let h = MAX_HEADROOM;
        if buf.len() < h + inner_len {
            dp.counters.drops.add(DropReason::NoBufferRoom);
            return Verdict::Done;
        }
        let mut w = lock(&self.out);
        let Worker {
            fw, paths, scratch, ..
        } = &mut *w;
        let st = paths.current();
        let v = fw.forward(
            &st.tenants,
            &st.tunnels,
            Ingress::Local { tenant: st.tenant },
            &mut buf[h..h + inner_len],
            Instant::now(),
            scratch,
        );
        let verdict = match v {
            path::Verdict::Forward {
                target: Target::Tunnel(id),
                ..
            } => match dp.name(id) {
                Some(name) => dp.sad.read(|snap| {
                    if let Some(false) = snap.outbound(name).map(|sa| sa.info().encap) {
                        if let Some(raw) = &dp.config.raw_esp {
                            if let Ok(sent) = snap.encrypt(name, buf, h..h + inner_len) {
                                raw.send(&buf[sent.esp], sent.to.ip());
                            }
                            return Verdict::Done;
                        }
                        let r = DropReason::EspNotEncapsulated;
                        if let Some(sa) = snap.outbound(name) {
                            sa.counters().drops.add(r);
                        }
                        if let Some(t) = snap.tunnel_counters(name) {
                            t.drops.add(r);
                        }
                        return Verdict::Done;
                    }
                    match snap.encrypt(name, buf, h..h + inner_len) {
                        Ok(sent) => Verdict::Network {
                            range: sent.esp,
                            to: sent.to,
                        },
                        // Counted by the SAD.
                        Err(_) => Verdict::Done,
                    }
                }),
                None => {
                    match dp.config.gre.as_ref().filter(|g| g.has(id)) {
                        Some(g) => {
                            g.send(id, &buf[h..h + inner_len]);
                        }
                        None => dp.counters.drops.add(DropReason::TunnelDown),
                    }
                    Verdict::Done
                }
            },
            path::Verdict::Forward {
                target: Target::Local,
                ..
            } => {
                dp.counters.drops.add(DropReason::LocalLoop);
                Verdict::Done
            }
            path::Verdict::Reply { len, dropped } => {
                dp.counters.drops.add(dropped.into());
                if len <= buf.len() {
                    buf[..len].copy_from_slice(&scratch[..len]);
                    Verdict::Tun(0..len)
                } else {
                    Verdict::Done
                }
            }
            path::Verdict::Drop(d) => {
                dp.counters.drops.add(d.into());
                Verdict::Done
            }
        };
        w.report(&dp.counters);
        verdict
    }

    fn inbound(&self, from: SocketAddr, outer: &mut [u8]) -> Verdict {
        let dp = &*self.dp;
        match classify(outer) {
            Ok(Natt::Esp) => {}
            Ok(Natt::Ike) => {
                if (dp.ike)(self.local, from, &outer[NON_ESP_MARKER.len()..]) {
                    dp.counters.ike_to_driver.fetch_add(1, Relaxed);
                } else {
                    dp.counters.drops.add(DropReason::IkeQueueFull);
                }
                return Verdict::Done;
            }
            Ok(Natt::Keepalive) => {
                dp.counters.drops.add(DropReason::NatKeepalive);
                return Verdict::Done;
            }
            Err(e) => {
                dp.sad.read(|s| s.node_drops().add(e.into()));
                return Verdict::Done;
            }
        }
        self.inbound_esp(outer)
    }
}

impl EspTransform {
    /// An ESP packet (from the SPI on) that arrived raw (IP protocol 50)
    /// or past the RFC 3948 demultiplexing: decrypt, check, forward.
    pub fn inbound_esp(&self, outer: &mut [u8]) -> Verdict {
        let dp = &*self.dp;
        let mut w = lock(&self.inb);
        let verdict = dp.sad.read(|snap| {
            let Ok(rx) = snap.decrypt(outer) else {
                // Counted per SA / tunnel / node by the SAD.
                return Verdict::Done;
            };
            let child = rx.child;
            let inner: Range<usize> = rx.decrypted.inner;
            let info = child.inbound.info();
            let reject = |r: DropReason| {
                child.inbound.counters().drops.add(r);
                child.tunnel.drops.add(r);
                Verdict::Done
            };
            // RFC 4301 §5.2: the packet must match the selectors of the
            // very SA it arrived on (the path then checks the tunnel's).
            match Flow::parse(&outer[inner.clone()]) {
                Ok(f) if flow_allowed(&f, Direction::Inbound, &info.local_ts, &info.remote_ts) => {}
                Ok(_) => return reject(DropReason::SelectorMismatch),
                Err(_) => return reject(DropReason::InnerMalformed),
            }
            let Some(&id) = dp.ids.get(&info.tunnel) else {
                return reject(DropReason::TunnelDown);
            };
            let Worker {
                fw, paths, scratch, ..
            } = &mut *w;
            let st = paths.current();
            let v = fw.forward(
                &st.tenants,
                &st.tunnels,
                Ingress::Tunnel {
                    id,
                    sa_selectors: None,
                },
                &mut outer[inner.clone()],
                Instant::now(),
                scratch,
            );
            match v {
                path::Verdict::Forward {
                    target: Target::Local,
                    ..
                } => {
                    dp.counters.to_local.fetch_add(1, Relaxed);
                    Verdict::Tun(inner)
                }
                path::Verdict::Forward {
                    target: Target::Tunnel(to),
                    ..
                } => {
                    // Into another tunnel of the tenant, in place: the old
                    // ESP header and trailer leave room unless the egress
                    // SA's transform needs more (then counted).
                    let Some(name) = dp.name(to) else {
                        // Into a GRE tunnel (which copies into its own
                        // buffer: the outer headers are longer).
                        if let Some(g) = dp.config.gre.as_ref().filter(|g| g.has(to)) {
                            if g.send(to, &outer[inner]) {
                                dp.counters.tunnel_to_tunnel.fetch_add(1, Relaxed);
                            }
                            return Verdict::Done;
                        }
                        return reject(DropReason::TunnelDown);
                    };
                    match reencrypt(snap, dp.config.raw_esp.as_deref(), name, outer, inner) {
                        Some(v) => {
                            dp.counters.tunnel_to_tunnel.fetch_add(1, Relaxed);
                            v
                        }
                        None => Verdict::Done,
                    }
                }
                path::Verdict::Reply { len, dropped } => {
                    child.inbound.counters().drops.add(dropped.into());
                    child.tunnel.drops.add(dropped.into());
                    // The ICMP error goes back into the tunnel the packet
                    // came from, where it fits in place.
                    if inner.start + len > outer.len() {
                        return Verdict::Done;
                    }
                    outer[inner.start..inner.start + len].copy_from_slice(&scratch[..len]);
                    reencrypt(
                        snap,
                        dp.config.raw_esp.as_deref(),
                        &info.tunnel,
                        outer,
                        inner.start..inner.start + len,
                    )
                    .unwrap_or(Verdict::Done)
                }
                path::Verdict::Drop(d) => reject(d.into()),
            }
        });
        w.report(&dp.counters);
        verdict
    }
}

/// Encrypts `buf[inner]` into `tunnel` in place, if the transform's
/// headroom and tailroom fit inside `buf`.
fn reencrypt(
    snap: &crate::Snapshot,
    raw: Option<&RawEsp>,
    tunnel: &str,
    buf: &mut [u8],
    inner: Range<usize>,
) -> Option<Verdict> {
    let sa = snap.outbound(tunnel)?;
    if !sa.info().encap && raw.is_none() {
        sa.counters().drops.add(DropReason::EspNotEncapsulated);
        return None;
    }
    if inner.start < sa.headroom() || buf.len() - inner.end < sa.trailer_len(inner.len()) {
        snap.tunnel_counters(tunnel)?
            .drops
            .add(DropReason::NoBufferRoom);
        return None;
    }
    let encap = sa.info().encap;
    let sent = snap.encrypt(tunnel, buf, inner).ok()?;
    if let (false, Some(raw)) = (encap, raw) {
        raw.send(&buf[sent.esp], sent.to.ip());
        return Some(Verdict::Done);
    }
    Some(Verdict::Network {
        range: sent.esp,
        to: sent.to,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum::checksum;
    use crate::SadConfig;
    use anyhub_crypto::Secret;
    use anyhub_ike::proposal::{EncrAlg, Selected};
    use anyhub_ike::wire::registry::{EncrId, ProtocolId};
    use anyhub_ike::{ts, ChildSa, DirectionKeys, IkeSaHandle};
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    const HUB: &str = "198.51.100.1:4500";
    const SITE: &str = "198.51.100.2:4500";

    /// The hub's view of a child SA of tunnel "site-a" (hub 10.20.0.0/24,
    /// site 10.10.0.0/24); keys derived from the SPIs.
    fn child(spi_in: u32, spi_out: u32) -> ChildSa {
        let keys = |spi: u32| {
            let mut k = vec![0x5a; 36];
            k[..4].copy_from_slice(&spi.to_be_bytes());
            DirectionKeys {
                encr: Secret::new(k),
                integ: None,
            }
        };
        ChildSa {
            tunnel: Arc::from("site-a"),
            ike: IkeSaHandle(1),
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
            local: HUB.parse().unwrap(),
            remote: SITE.parse().unwrap(),
            encap: true,
            rekey_of: None,
        }
    }

    /// The site's view of the same SA.
    fn mirror(c: &ChildSa) -> ChildSa {
        let mut m = c.clone();
        m.spi_in = c.spi_out;
        m.spi_out = c.spi_in;
        std::mem::swap(&mut m.keys_in, &mut m.keys_out);
        std::mem::swap(&mut m.local_ts, &mut m.remote_ts);
        std::mem::swap(&mut m.local, &mut m.remote);
        m
    }

    /// An IPv4 UDP packet `src → dst` with `payload` bytes, DF set.
    fn udp4(src: [u8; 4], dst: [u8; 4], payload: usize) -> Vec<u8> {
        let total = 20 + 8 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..22].copy_from_slice(&1234u16.to_be_bytes());
        p[22..24].copy_from_slice(&5678u16.to_be_bytes());
        p[24..26].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        for (i, b) in p[28..].iter_mut().enumerate() {
            *b = i as u8;
        }
        p
    }

    type IkeSeen = (SocketAddr, SocketAddr, Vec<u8>);

    struct Rig {
        hub: Arc<EspDataplane>,
        xf: EspTransform,
        site: Sad,
        ike: Arc<Mutex<Vec<IkeSeen>>>,
        ike_full: Arc<AtomicBool>,
    }

    fn rig() -> Rig {
        let sad = Arc::new(Sad::new(SadConfig::new(1)));
        let c = child(0x0010_0001, 0xc000_0001);
        sad.install(Instant::now(), &c).unwrap();
        let site = Sad::new(SadConfig::new(2));
        site.install(Instant::now(), &mirror(&c)).unwrap();
        let ike = Arc::new(Mutex::new(Vec::new()));
        let ike_full = Arc::new(AtomicBool::new(false));
        let (sink_log, full) = (ike.clone(), ike_full.clone());
        let hub = EspDataplane::new(
            sad,
            EspDataplaneConfig {
                tunnels: vec![Arc::from("other"), Arc::from("site-a")],
                path_mtu: 1500,
                gre: None,
                raw_esp: None,
            },
            Box::new(move |l, r, m| {
                if full.load(Relaxed) {
                    return false;
                }
                sink_log.lock().unwrap().push((l, r, m.to_vec()));
                true
            }),
        );
        let xf = hub.transform(HUB.parse().unwrap());
        Rig {
            hub,
            xf,
            site,
            ike,
            ike_full,
        }
    }

    /// `pkt` as the forwarding loop hands it: headroom, packet, tailroom.
    fn tun_buf(pkt: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; MAX_HEADROOM + pkt.len() + MAX_TAILROOM];
        b[MAX_HEADROOM..MAX_HEADROOM + pkt.len()].copy_from_slice(pkt);
        b
    }

    /// What the site sends: `pkt` encrypted with its SA.
    fn from_site(site: &Sad, pkt: &[u8]) -> Vec<u8> {
        let mut b = tun_buf(pkt);
        let r = site
            .read(|s| {
                s.encrypt("site-a", &mut b, MAX_HEADROOM..MAX_HEADROOM + pkt.len())
                    .map(|x| x.esp)
            })
            .unwrap();
        b[r].to_vec()
    }

    fn site_drops(r: &Rig, reason: DropReason) -> u64 {
        r.hub
            .sad()
            .sa_counters(0x0010_0001)
            .unwrap()
            .0
            .drops
            .iter()
            .find(|(d, _)| *d == reason)
            .map_or(0, |(_, n)| *n)
    }

    #[test]
    fn routes_follow_the_installed_sas() {
        let r = rig();
        let routes = r.hub.refresh();
        assert_eq!(
            routes.tunnels,
            vec![("10.10.0.0/24".parse().unwrap(), Arc::from("site-a"))]
        );
        r.hub.sad().remove(0x0010_0001);
        assert!(r.hub.refresh().tunnels.is_empty());
    }

    #[test]
    fn outbound_encrypts_to_the_peer_and_the_peer_opens_it() {
        let r = rig();
        let pkt = udp4([10, 20, 0, 1], [10, 10, 0, 1], 100);
        let mut b = tun_buf(&pkt);
        let Verdict::Network { range, to } = r.xf.outbound(&mut b, pkt.len()) else {
            panic!("not sent")
        };
        assert_eq!(to, SITE.parse().unwrap());
        assert_eq!(
            &b[range.start..range.start + 4],
            &0xc000_0001u32.to_be_bytes()
        );
        let mut esp = b[range].to_vec();
        let inner = r
            .site
            .read(|s| s.decrypt(&mut esp).map(|x| x.decrypted.inner))
            .unwrap();
        assert_eq!(&esp[inner], &pkt[..]);
    }

    #[test]
    fn outbound_outside_every_tunnel_is_not_sent() {
        let r = rig();
        // No tunnel routes 192.0.2.0/24: the default route is the local
        // side, where it came from.
        let pkt = udp4([10, 20, 0, 1], [192, 0, 2, 1], 10);
        let mut b = tun_buf(&pkt);
        assert_eq!(r.xf.outbound(&mut b, pkt.len()), Verdict::Done);
        assert_eq!(r.hub.counters.drops.get(DropReason::LocalLoop), 1);
        // Routed to the tunnel, but from a source outside its selectors.
        let pkt = udp4([10, 99, 0, 1], [10, 10, 0, 1], 10);
        let mut b = tun_buf(&pkt);
        assert_eq!(r.xf.outbound(&mut b, pkt.len()), Verdict::Done);
        assert_eq!(r.hub.counters.drops.get(DropReason::SelectorMismatch), 1);
        // Garbage from the TUN.
        let mut b = tun_buf(&[0x45, 0, 0]);
        assert_eq!(r.xf.outbound(&mut b, 3), Verdict::Done);
        assert_eq!(r.hub.counters.drops.get(DropReason::InnerMalformed), 1);
    }

    #[test]
    fn too_big_with_df_answers_fragmentation_needed_into_the_tun() {
        let r = rig();
        let pkt = udp4([10, 20, 0, 1], [10, 10, 0, 1], 1460);
        let mut b = tun_buf(&pkt);
        let Verdict::Tun(range) = r.xf.outbound(&mut b, pkt.len()) else {
            panic!("no ICMP error")
        };
        let icmp = &b[range];
        assert_eq!(icmp[9], 1, "ICMP");
        assert_eq!(&icmp[16..20], &[10, 20, 0, 1], "back to the sender");
        assert_eq!((icmp[20], icmp[21]), (3, 4), "fragmentation needed");
        let mtu = u16::from_be_bytes([icmp[26], icmp[27]]);
        assert_eq!(usize::from(mtu), 1438, "the tunnel's inner MTU");
        assert_eq!(r.hub.counters.drops.get(DropReason::TooBig), 1);
        assert_eq!(r.hub.counters.icmp_errors.load(Relaxed), 1);
    }

    #[test]
    fn inbound_decrypts_to_the_tun_once() {
        let r = rig();
        let pkt = udp4([10, 10, 0, 1], [10, 20, 0, 1], 300);
        let esp = from_site(&r.site, &pkt);
        let mut d = esp.clone();
        let Verdict::Tun(range) = r.xf.inbound(SITE.parse().unwrap(), &mut d) else {
            panic!("not delivered")
        };
        assert_eq!(&d[range], &pkt[..]);
        // The same datagram again: a replay.
        let mut d = esp.clone();
        assert_eq!(r.xf.inbound(SITE.parse().unwrap(), &mut d), Verdict::Done);
        assert_eq!(site_drops(&r, DropReason::EspReplay), 1);
        // Tampered.
        let mut d = from_site(&r.site, &pkt);
        d[30] ^= 1;
        assert_eq!(r.xf.inbound(SITE.parse().unwrap(), &mut d), Verdict::Done);
        assert_eq!(site_drops(&r, DropReason::EspAuthFailed), 1);
        let (rx, _) = r.hub.sad().sa_counters(0x0010_0001).unwrap();
        assert_eq!(rx.packets, 1);
        assert_eq!(r.hub.counters.to_local.load(Relaxed), 1);
    }

    #[test]
    fn inbound_outside_the_sas_selectors_never_arrives() {
        let r = rig();
        // Authentic, but from an address the site's selectors do not hold
        // (the site's own policy would not send it; a compromised or buggy
        // peer could).
        let pkt = udp4([10, 11, 0, 1], [10, 20, 0, 1], 50);
        let mut d = from_site(&r.site, &pkt);
        assert_eq!(r.xf.inbound(SITE.parse().unwrap(), &mut d), Verdict::Done);
        // And to an address outside ours.
        let pkt = udp4([10, 10, 0, 1], [10, 21, 0, 1], 50);
        let mut d = from_site(&r.site, &pkt);
        assert_eq!(r.xf.inbound(SITE.parse().unwrap(), &mut d), Verdict::Done);
        assert_eq!(site_drops(&r, DropReason::SelectorMismatch), 2);
        let t = r.hub.sad().snapshot();
        let tc = t.tunnel_counters("site-a").unwrap();
        assert_eq!(tc.drops.get(DropReason::SelectorMismatch), 2);
    }

    #[test]
    fn ike_and_keepalives_share_the_socket() {
        let r = rig();
        let from: SocketAddr = SITE.parse().unwrap();
        let mut ike = vec![0, 0, 0, 0, 0x11, 0x22, 0x33];
        assert_eq!(r.xf.inbound(from, &mut ike), Verdict::Done);
        assert_eq!(
            r.ike.lock().unwrap().as_slice(),
            &[(HUB.parse().unwrap(), from, vec![0x11, 0x22, 0x33])]
        );
        assert_eq!(r.xf.inbound(from, &mut [0xff]), Verdict::Done);
        assert_eq!(r.hub.counters.drops.get(DropReason::NatKeepalive), 1);
        r.ike_full.store(true, Relaxed);
        assert_eq!(r.xf.inbound(from, &mut ike), Verdict::Done);
        assert_eq!(r.hub.counters.drops.get(DropReason::IkeQueueFull), 1);
        assert_eq!(r.hub.counters.ike_to_driver.load(Relaxed), 1);
        // Too short for ESP, unknown SPI: node drops.
        assert_eq!(r.xf.inbound(from, &mut [1, 2, 3, 4, 5]), Verdict::Done);
        let mut unknown = from_site(&r.site, &udp4([10, 10, 0, 1], [10, 20, 0, 1], 10));
        unknown[..4].copy_from_slice(&0x0010_0099u32.to_be_bytes());
        assert_eq!(r.xf.inbound(from, &mut unknown), Verdict::Done);
        let snap = r.hub.sad().snapshot();
        assert_eq!(snap.node_drops().get(DropReason::EspMalformed), 1);
        assert_eq!(snap.node_drops().get(DropReason::EspUnknownSpi), 1);
    }

    #[test]
    fn a_rekey_moves_outbound_and_old_inbound_still_opens() {
        let r = rig();
        let pkt = udp4([10, 10, 0, 1], [10, 20, 0, 1], 40);
        let early = from_site(&r.site, &pkt);
        let mut new = child(0x0010_0002, 0xc000_0002);
        new.rekey_of = Some(0x0010_0001);
        r.hub.sad().install(Instant::now(), &new).unwrap();
        r.hub.refresh();
        let out = udp4([10, 20, 0, 1], [10, 10, 0, 1], 40);
        let mut b = tun_buf(&out);
        let Verdict::Network { range, .. } = r.xf.outbound(&mut b, out.len()) else {
            panic!("not sent")
        };
        assert_eq!(
            &b[range.start..range.start + 4],
            &0xc000_0002u32.to_be_bytes()
        );
        let mut d = early.clone();
        assert!(matches!(
            r.xf.inbound(SITE.parse().unwrap(), &mut d),
            Verdict::Tun(_)
        ));
    }

    #[test]
    fn raw_esp_sas_are_not_sent_over_udp() {
        let r = rig();
        let mut raw = child(0x0010_0003, 0xc000_0003);
        raw.encap = false;
        r.hub.sad().install(Instant::now(), &raw).unwrap();
        r.hub.refresh();
        let pkt = udp4([10, 20, 0, 1], [10, 10, 0, 1], 40);
        let mut b = tun_buf(&pkt);
        assert_eq!(r.xf.outbound(&mut b, pkt.len()), Verdict::Done);
        let (_, out) = r.hub.sad().sa_counters(0x0010_0003).unwrap();
        assert_eq!(out.packets, 0);
        assert_eq!(out.drops, vec![(DropReason::EspNotEncapsulated, 1)]);
    }

    #[test]
    fn mutated_datagrams_never_panic() {
        let r = rig();
        let pkt = udp4([10, 10, 0, 1], [10, 20, 0, 1], 64);
        let esp = from_site(&r.site, &pkt);
        let from: SocketAddr = SITE.parse().unwrap();
        for i in 0..esp.len() {
            for bit in [0x01u8, 0x80] {
                let mut d = esp.clone();
                d[i] ^= bit;
                let _ = r.xf.inbound(from, &mut d);
            }
            let mut d = esp[..i].to_vec();
            let _ = r.xf.inbound(from, &mut d);
        }
        for n in 0..64 {
            let mut b = tun_buf(&pkt[..n.min(pkt.len())]);
            let _ = r.xf.outbound(&mut b, n.min(pkt.len()));
        }
    }
}
