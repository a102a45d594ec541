//! The GRE tunnels of a node, live: [`crate::gre::GreTunnels`] (the
//! sans-IO part) over one raw IPv4 socket for protocol 47
//! ([`crate::sys::raw`]), beside the ESP dataplane.
//!
//! ```text
//!  inbound   raw socket (outer IPv4 + GRE) ─► GreTunnels::decapsulate
//!              keepalive  → the inner packet sent back out as it is
//!              inner      → EspDataplane::from_gre (route, TTL, MTU, MSS)
//!                           → written into the TUN (the local side)
//!                           or an ICMP error back into the GRE tunnel
//!  outbound  TUN ─► EspTransform (route says: a GRE tunnel)
//!            ─► GreSide::send: GRE + outer IPv4 header ─► raw socket
//! ```
//!
//! One receive thread ([`GreSide::run_rx`]): GRE customers are few per
//! node and GRE costs no crypto, so it is not sharded; sending happens on
//! the ESP workers' threads (the socket is shared, `sendto` is
//! thread-safe). Transit between a GRE tunnel and an ESP tunnel is not
//! forwarded yet (counted as `tunnel_down`).

use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::counters::{DropCounters, DropReason, Traffic};
use crate::esp_transform::{EspDataplane, FromGre};
use crate::gre::{Decap, GreTunnelConfig, GreTunnels};
use crate::path::{Selectors, TunnelPath};
use crate::route::{Prefix, TunnelId};
use crate::sys::raw::{RawIpv4, IPPROTO_GRE};
use crate::sys::tun::Tun;

/// The largest outer packet: an IPv4 total length.
const MAX_PACKET: usize = 65_535;

/// One GRE tunnel's counters.
#[derive(Debug, Default)]
pub struct GreTunnelCounters {
    /// Inner packets decapsulated from it (keepalives not included).
    pub rx: Traffic,
    /// Inner packets encapsulated into it.
    pub tx: Traffic,
    /// Keepalives reflected back to the customer's router.
    pub keepalives: AtomicU64,
    /// Drops attributed to it, by reason.
    pub drops: DropCounters,
}

/// A GRE tunnel with the routes that lead into it.
#[derive(Clone, Debug)]
pub struct GreRoute {
    pub config: GreTunnelConfig,
    /// Its name (the config's `id`).
    pub name: Arc<str>,
    /// Inner prefixes behind the customer's router.
    pub routes: Vec<Prefix>,
}

/// The node's GRE tunnels and their socket.
#[derive(Debug)]
pub struct GreSide {
    tunnels: GreTunnels,
    names: Vec<Arc<str>>,
    routes: Vec<(Prefix, TunnelId)>,
    sock: RawIpv4,
    /// Outer IPv4 Identification, counted up.
    ident: AtomicU16,
    per_tunnel: Vec<GreTunnelCounters>,
    /// Drops before a tunnel is known (malformed, unknown tunnel, …).
    pub drops: DropCounters,
}

impl GreSide {
    /// Opens the raw socket on `local` (the node's address the customers'
    /// routers send GRE to). `tunnels[i].config.id` must be `first + i`.
    pub fn open(local: Ipv4Addr, tunnels: Vec<GreRoute>) -> Result<GreSide, String> {
        let mut names = Vec::with_capacity(tunnels.len());
        let mut routes = Vec::new();
        let mut configs = Vec::with_capacity(tunnels.len());
        for t in tunnels {
            if t.config.local != IpAddr::V4(local) {
                return Err(format!(
                    "gre tunnel {}: local {} is not the GRE address {local}",
                    t.name, t.config.local
                ));
            }
            routes.extend(t.routes.iter().map(|p| (*p, t.config.id)));
            names.push(t.name);
            configs.push(t.config);
        }
        let per_tunnel = configs.iter().map(|_| Default::default()).collect();
        let tunnels = GreTunnels::build(configs).map_err(|e| format!("gre: {e}"))?;
        let sock = RawIpv4::open(IPPROTO_GRE, local, true)
            .map_err(|e| format!("gre: cannot open a raw GRE socket on {local}: {e}"))?;
        Ok(GreSide {
            tunnels,
            names,
            routes,
            sock,
            ident: AtomicU16::new(1),
            per_tunnel,
            drops: DropCounters::new(),
        })
    }

    /// The forwarding facts of every GRE tunnel (MTU, MSS clamp from its
    /// real overhead; no selectors: GRE carries whatever is routed to it).
    pub fn paths(&self) -> Vec<TunnelPath> {
        self.tunnels
            .iter()
            .map(|c| c.path(Selectors::any(), None))
            .collect()
    }

    /// `(prefix, tunnel)` of every configured route into a GRE tunnel.
    pub fn routes(&self) -> &[(Prefix, TunnelId)] {
        &self.routes
    }

    /// Whether `id` is one of these tunnels.
    pub fn has(&self, id: TunnelId) -> bool {
        self.tunnels.get(id).is_some()
    }

    /// Name, configuration and counters of each tunnel, in config order.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &GreTunnelConfig, &GreTunnelCounters)> {
        self.names
            .iter()
            .zip(self.tunnels.iter())
            .zip(&self.per_tunnel)
            .map(|((n, c), k)| (n, c, k))
    }

    fn counters(&self, id: TunnelId) -> Option<&GreTunnelCounters> {
        self.per_tunnel.get(self.tunnels.index_of(id)?)
    }

    /// Encapsulates `inner` (an IP packet) into tunnel `id` and sends it.
    /// Copies once: callers' buffers lack the outer headroom.
    pub fn send(&self, id: TunnelId, inner: &[u8]) -> bool {
        let Some(t) = self.tunnels.get(id) else {
            self.drops.add(DropReason::TunnelDown);
            return false;
        };
        let c = self.counters(id);
        let hl = t.overhead();
        if hl + inner.len() > MAX_PACKET {
            if let Some(c) = c {
                c.drops.add(DropReason::TooBig);
            }
            return false;
        }
        thread_local! {
            // One outer buffer per sending thread, made once.
            static OUTER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; MAX_PACKET]);
        }
        OUTER.with_borrow_mut(|buf| {
            buf[hl..hl + inner.len()].copy_from_slice(inner);
            let ident = self.ident.fetch_add(1, Relaxed);
            // The path checked the MTU (a DF packet too big got an ICMP
            // error); one without DF may be fragmented on the outer path.
            let df = inner.first().is_some_and(|b| b >> 4 == 6)
                || inner.get(6).is_some_and(|b| b & 0x40 != 0);
            match self
                .tunnels
                .encapsulate(t, buf, hl..hl + inner.len(), !df, ident)
            {
                Ok(range) => self.send_outer(t, &buf[range], c, inner.len()),
                Err(_) => {
                    if let Some(c) = c {
                        c.drops.add(DropReason::InnerMalformed);
                    }
                    false
                }
            }
        })
    }

    fn send_outer(
        &self,
        t: &GreTunnelConfig,
        outer: &[u8],
        c: Option<&GreTunnelCounters>,
        inner_len: usize,
    ) -> bool {
        let IpAddr::V4(dst) = t.remote else {
            return false;
        };
        match self.sock.send(outer, dst) {
            Ok(()) => {
                if let Some(c) = c {
                    c.tx.add(1, inner_len as u64);
                }
                true
            }
            Err(_) => {
                if let Some(c) = c {
                    c.drops.add(DropReason::SendFailed);
                }
                false
            }
        }
    }

    /// The receive loop, until `stop`: GRE from the raw socket into `tun`
    /// (written with a zero vnet header when the TUN has one).
    pub fn run_rx(&self, dp: &EspDataplane, tun: &Tun, stop: &AtomicBool) {
        let mut buf = vec![0u8; MAX_PACKET];
        let mut worker = dp.gre_worker();
        while !stop.load(Relaxed) {
            match crate::sys::poll_readable(self.sock.as_raw_fd(), Duration::from_millis(100)) {
                Ok(true) => {}
                _ => continue,
            }
            let n = match self.sock.recv(&mut buf) {
                Ok(n) => n,
                Err(_) => continue,
            };
            let (id, range): (TunnelId, Range<usize>) = match self.tunnels.decapsulate(&buf[..n]) {
                Decap::Keepalive { tunnel, range } => {
                    let c = self.counters(tunnel.id);
                    if let Some(c) = c {
                        c.keepalives.fetch_add(1, Relaxed);
                    }
                    let IpAddr::V4(dst) = tunnel.remote else {
                        continue;
                    };
                    if self.sock.send(&buf[range], dst).is_err() {
                        if let Some(c) = c {
                            c.drops.add(DropReason::SendFailed);
                        }
                    }
                    continue;
                }
                Decap::Inner { tunnel, range } => (tunnel.id, range),
                Decap::Drop(d) => {
                    self.drops.add(d.into());
                    continue;
                }
            };
            let c = self.counters(id);
            if let Some(c) = c {
                c.rx.add(1, range.len() as u64);
            }
            match dp.from_gre(&mut worker, id, &mut buf[range.clone()]) {
                FromGre::Local => {
                    if tun.write_ip(&buf[range]).is_err() {
                        if let Some(c) = c {
                            c.drops.add(DropReason::TunWriteFailed);
                        }
                    }
                }
                FromGre::Reply(reply) => {
                    self.send(id, &reply);
                }
                FromGre::Drop(d) => {
                    if let Some(c) = c {
                        c.drops.add(d);
                    }
                }
                FromGre::Done => {}
            }
        }
    }

    /// Starts [`GreSide::run_rx`] in a thread.
    pub fn spawn_rx(
        self: &Arc<Self>,
        dp: Arc<EspDataplane>,
        tun: Tun,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("dp-gre-rx".into())
            .spawn(move || me.run_rx(&dp, &tun, &stop))
    }
}
