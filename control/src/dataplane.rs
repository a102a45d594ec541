//! Starting the userspace ESP dataplane of `[dataplane]`: the TUN device
//! (the node's local side), its addresses and kernel routes, and the
//! forwarding workers of `anyhub_dataplane::io` running
//! [`EspTransform`] over the NAT-T socket.
//!
//! # Who owns the NAT-T socket
//!
//! The dataplane workers do. ESP is nearly all of what arrives on 4500 and
//! it wants batches (`recvmmsg`, UDP GRO) in threads that never wait for
//! the tokio loop; IKE on 4500 is a few messages per SA per hour. So the
//! workers read the socket, classify every datagram (RFC 3948: the
//! non-ESP marker, NAT keepalives) and hand the IKE messages to the IKE
//! driver over a bounded channel ([`IKE_QUEUE`]; when full, the message
//! is dropped and counted as `ike_queue_full` — IKE retransmits, and a
//! flood cannot grow memory). The reverse (the tokio loop reads and passes
//! ESP to workers) would put a channel hop and a copy on every ESP packet.
//! The IKE driver still sends its NAT-T messages itself, through a
//! duplicate of the same socket (same local address and port, as NAT-T
//! requires; UDP sends from two threads are fine).
//!
//! The TUN device and its routes are set up with `ip(8)`, as `dp-forward`
//! does; the device (and with it its addresses and routes) disappears
//! when anyhubd exits.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use anyhub_dataplane::esp_transform::{selector_prefixes, EspDataplane, EspDataplaneConfig};
use anyhub_dataplane::io::{Forwarder, IoConfig, IoCounters};
use anyhub_dataplane::sys::tun::{offload, Tun, TunOptions};
use anyhub_dataplane::Sad;
use anyhub_ike::TunnelConfig;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhub_dataplane::esp_raw::RawEsp;
use anyhub_dataplane::gre::GreTunnelConfig;
use anyhub_dataplane::gre_side::{GreRoute, GreSide};
use anyhub_dataplane::route::{TenantId, TunnelId};
use tokio::sync::mpsc;

use crate::config::DataplaneConfig;

/// IKE messages (from the NAT-T socket) waiting for the IKE driver.
pub const IKE_QUEUE: usize = 1024;

/// An IKE message the workers took off the NAT-T socket: (local, remote,
/// message without the marker).
pub type IkeDatagram = (SocketAddr, SocketAddr, Vec<u8>);

/// The running dataplane; dropping it stops the workers.
pub struct Running {
    pub dp: Arc<EspDataplane>,
    /// The GRE tunnels, when `[[gre]]` configures any.
    pub gre: Option<Arc<GreSide>>,
    /// The raw ESP socket (IP protocol 50), when `raw_esp` is on.
    pub raw_esp: Option<Arc<RawEsp>>,
    /// Stops the GRE and raw ESP receive threads.
    gre_stop: Arc<AtomicBool>,
    gre_rx: Option<std::thread::JoinHandle<()>>,
    raw_rx: Option<std::thread::JoinHandle<()>>,
    fwd: Option<Forwarder>,
    pub tun: String,
    /// Routes installed in the kernel (for the log).
    pub routes: Vec<String>,
}

impl Running {
    pub fn io(&self) -> Option<&Arc<IoCounters>> {
        self.fwd.as_ref().map(Forwarder::counters)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(f) = self.fwd.take() {
            f.stop();
        }
        self.gre_stop.store(true, Ordering::Relaxed);
        for t in [self.gre_rx.take(), self.raw_rx.take()]
            .into_iter()
            .flatten()
        {
            let _ = t.join();
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Opens the TUN, configures it, and starts the workers on `natt` (bound
/// to `local`). IKE messages from the socket go to `ike_tx`.
pub fn start(
    cfg: &DataplaneConfig,
    sad: Arc<Sad>,
    tunnels: &[Arc<TunnelConfig>],
    natt: &std::net::UdpSocket,
    local: SocketAddr,
    ike_tx: mpsc::Sender<IkeDatagram>,
) -> Result<Running, String> {
    // GRE tunnels take the TunnelIds after the IPsec tunnels'.
    let gre = if cfg.gre.is_empty() {
        None
    } else {
        let local = cfg.gre[0].local;
        let routes = cfg
            .gre
            .iter()
            .enumerate()
            .map(|(i, g)| GreRoute {
                config: GreTunnelConfig {
                    id: TunnelId((tunnels.len() + i) as u32),
                    tenant: TenantId(0),
                    remote: g.remote.into(),
                    local: g.local.into(),
                    key: g.key,
                    path_mtu: cfg.path_mtu as usize,
                    ttl: g.ttl,
                },
                name: g.id.clone(),
                routes: g.routes.clone(),
            })
            .collect();
        Some(Arc::new(GreSide::open(local, routes)?))
    };
    // ESP over IP (protocol 50) for SAs without UDP encapsulation.
    let raw_esp = match (cfg.raw_esp, local.ip()) {
        (true, std::net::IpAddr::V4(a)) => Some(Arc::new(RawEsp::open(a).map_err(|e| {
            format!("dataplane.raw_esp: cannot open a raw ESP socket on {a}: {e}")
        })?)),
        (true, _) => {
            tracing::warn!(
                "raw ESP needs an IPv4 listen address: SAs without UDP encapsulation are dropped"
            );
            None
        }
        (false, _) => None,
    };
    let dp = EspDataplane::new(
        sad,
        EspDataplaneConfig {
            tunnels: tunnels.iter().map(|t| t.id.clone()).collect(),
            path_mtu: cfg.path_mtu as usize,
            gre: gre.clone(),
            raw_esp: raw_esp.clone(),
        },
        Box::new(move |l, r, m| ike_tx.try_send((l, r, m.to_vec())).is_ok()),
    );
    let opts = TunOptions {
        vnet_hdr: cfg.offload,
        multi_queue: cfg.queues > 1,
        nonblocking: true,
    };
    let mut queues = Vec::with_capacity(cfg.queues);
    let mut accepted = 0;
    for _ in 0..cfg.queues {
        let tun = Tun::open(&cfg.tun, opts)
            .map_err(|e| format!("dataplane.tun: cannot open TUN '{}': {e}", cfg.tun))?;
        if cfg.offload {
            accepted = tun.negotiate_offload(
                offload::CSUM
                    | offload::TSO4
                    | offload::TSO6
                    | offload::TSO_ECN
                    | offload::USO4
                    | offload::USO6,
            );
        }
        let sock = natt
            .try_clone()
            .map_err(|e| format!("cannot share the NAT-T socket: {e}"))?;
        queues.push((tun, sock, Arc::new(dp.transform(local))));
    }
    let name = queues[0].0.name().to_string();
    for (addr, len) in &cfg.addresses {
        let a = format!("{addr}/{len}");
        let mut args = vec!["addr", "replace", &a, "dev", &name];
        if addr.is_ipv6() {
            args.push("nodad");
        }
        ip(&args)?;
    }
    ip(&[
        "link",
        "set",
        "dev",
        &name,
        "mtu",
        &cfg.mtu.to_string(),
        "up",
    ])?;
    let mut routes = Vec::new();
    if cfg.kernel_routes {
        for t in tunnels {
            for ts in &t.remote_ts {
                for p in selector_prefixes(ts).unwrap_or_default() {
                    // A default route into the TUN would take the
                    // node's own ESP with it.
                    if p.is_default() {
                        tracing::warn!(tunnel = %t.id, "remote_ts is a default route: not routed into the TUN");
                        continue;
                    }
                    let ps = p.to_string();
                    ip(&["route", "replace", &ps, "dev", &name])?;
                    routes.push(ps);
                }
            }
        }
    }
    if cfg.kernel_routes {
        for g in &cfg.gre {
            for p in &g.routes {
                if p.is_default() {
                    tracing::warn!(gre = %g.id, "a default route: not routed into the TUN");
                    continue;
                }
                let ps = p.to_string();
                ip(&["route", "replace", &ps, "dev", &name])?;
                routes.push(ps);
            }
        }
    }
    // The GRE receiver writes into the first queue through its own handle.
    let gre_stop = Arc::new(AtomicBool::new(false));
    let gre_rx = match &gre {
        Some(g) => {
            let tun = queues[0]
                .0
                .try_clone()
                .map_err(|e| format!("cannot share the TUN with the GRE receiver: {e}"))?;
            Some(
                g.spawn_rx(dp.clone(), tun, gre_stop.clone())
                    .map_err(|e| format!("cannot start the GRE receiver: {e}"))?,
            )
        }
        None => None,
    };
    let raw_rx = match &raw_esp {
        Some(r) => {
            let tun = queues[0]
                .0
                .try_clone()
                .map_err(|e| format!("cannot share the TUN with the raw ESP receiver: {e}"))?;
            let udp = natt
                .try_clone()
                .map_err(|e| format!("cannot share the NAT-T socket: {e}"))?;
            Some(
                r.spawn_rx(dp.transform(local), tun, udp, gre_stop.clone())
                    .map_err(|e| format!("cannot start the raw ESP receiver: {e}"))?,
            )
        }
        None => None,
    };
    let io = IoConfig {
        udp_gro: cfg.offload,
        tun_gro: cfg.offload && accepted & offload::TSO4 != 0,
        udp: if cfg.offload {
            anyhub_dataplane::io::UdpMode::Gso
        } else {
            anyhub_dataplane::io::UdpMode::Mmsg
        },
        ..IoConfig::default()
    };
    let fwd = Forwarder::spawn(queues, io).map_err(|e| format!("cannot start workers: {e}"))?;
    Ok(Running {
        dp,
        gre,
        raw_esp,
        gre_stop,
        gre_rx,
        raw_rx,
        fwd: Some(fwd),
        tun: name,
        routes,
    })
}
