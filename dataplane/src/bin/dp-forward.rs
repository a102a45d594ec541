//! `dp-forward`: one side of a measurement tunnel. A TUN device with an
//! address, the forwarding loop of `anyhub_dataplane::io`, and a UDP
//! socket to the peer, with the AES-256-GCM stand-in transform
//! (`io::aead_test`, not ESP). Run one in each of two namespaces joined by
//! a veth and push iperf3 through the TUN addresses; `interop
//! bench-dataplane` does exactly that.
//!
//! ```text
//! dp-forward --tun NAME --addr 10.40.0.1/24 [--addr6 fd00:40::1/64] --local 198.51.100.2:4500 --peer 198.51.100.1:4500
//!            --key-out HEX36 --key-in HEX36 --id-out N --id-in N
//!            [--mtu 1400] [--queues NCPU] [--tun offload|plain] [--udp gso|mmsg|plain]
//!            [--udp-gro on|off] [--batch 8] [--spin 20] [--threads-per-queue 2|1] [--stats SECS]
//! ```
//! One queue (a TUN fd of a multi-queue TUN, a UDP socket, two threads)
//! per core by default; queue `i` uses local and peer port + i, so that
//! each queue's datagrams land on the peer's queue `i` socket.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, ExitCode};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhub_dataplane::io::aead_test::AeadTestTransform;
use anyhub_dataplane::io::{Forwarder, IoConfig, UdpMode};
use anyhub_dataplane::sys::tun::{offload, Tun, TunOptions};

type Res<T> = Result<T, String>;

struct Args {
    tun: String,
    addr: String,
    addr6: Option<String>,
    mtu: u32,
    local: SocketAddr,
    peer: SocketAddr,
    key_out: Vec<u8>,
    key_in: Vec<u8>,
    id_out: u32,
    id_in: u32,
    queues: usize,
    tun_offload: bool,
    udp: UdpMode,
    udp_gro: bool,
    batch: usize,
    spin: u32,
    one_thread: bool,
    stats: u64,
}

fn hex(s: &str) -> Res<Vec<u8>> {
    if s.len() % 2 != 0 {
        return Err("odd hex length".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

fn parse() -> Res<Args> {
    let mut a = Args {
        tun: String::new(),
        addr: String::new(),
        addr6: None,
        mtu: 1400,
        local: "0.0.0.0:0".parse().unwrap(),
        peer: "0.0.0.0:0".parse().unwrap(),
        key_out: vec![],
        key_in: vec![],
        id_out: 1,
        id_in: 2,
        queues: std::thread::available_parallelism().map_or(1, |n| n.get().min(16)),
        tun_offload: true,
        udp: UdpMode::Gso,
        udp_gro: true,
        batch: 8,
        spin: IoConfig::default().spin,
        one_thread: IoConfig::default().one_thread_per_queue,
        stats: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {v}: {e}");
        match flag.as_str() {
            "--tun" => a.tun = v,
            "--addr" => a.addr = v,
            "--addr6" => a.addr6 = Some(v),
            "--mtu" => a.mtu = v.parse().map_err(|e| bad(&e))?,
            "--local" => a.local = v.parse().map_err(|e| bad(&e))?,
            "--peer" => a.peer = v.parse().map_err(|e| bad(&e))?,
            "--key-out" => a.key_out = hex(&v).map_err(|e| bad(&e))?,
            "--key-in" => a.key_in = hex(&v).map_err(|e| bad(&e))?,
            "--id-out" => a.id_out = v.parse().map_err(|e| bad(&e))?,
            "--id-in" => a.id_in = v.parse().map_err(|e| bad(&e))?,
            "--queues" => a.queues = v.parse().map_err(|e| bad(&e))?,
            "--batch" => a.batch = v.parse().map_err(|e| bad(&e))?,
            "--threads-per-queue" => a.one_thread = v == "1",
            "--spin" => a.spin = v.parse().map_err(|e| bad(&e))?,
            "--stats" => a.stats = v.parse().map_err(|e| bad(&e))?,
            "--tun-mode" | "--tun-io" => {
                a.tun_offload = match v.as_str() {
                    "offload" => true,
                    "plain" => false,
                    _ => return Err(bad(&"offload|plain")),
                }
            }
            "--udp" => {
                a.udp = match v.as_str() {
                    "gso" => UdpMode::Gso,
                    "mmsg" => UdpMode::Mmsg,
                    "plain" => UdpMode::Plain,
                    _ => return Err(bad(&"gso|mmsg|plain")),
                }
            }
            "--udp-gro" => a.udp_gro = v == "on",
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.tun.is_empty() || a.addr.is_empty() || a.peer.port() == 0 || a.local.port() == 0 {
        return Err("--tun, --addr, --local and --peer are required".into());
    }
    if a.queues == 0 || a.queues > 16 {
        return Err("--queues must be 1..16".into());
    }
    Ok(a)
}

fn ip(args: &[&str]) -> Res<()> {
    let st = Command::new("ip")
        .args(args)
        .status()
        .map_err(|e| format!("ip: {e}"))?;
    if !st.success() {
        return Err(format!("`ip {}` failed", args.join(" ")));
    }
    Ok(())
}

fn with_port(a: SocketAddr, i: usize) -> SocketAddr {
    let mut a = a;
    a.set_port(a.port() + i as u16);
    a
}

fn run() -> Res<()> {
    let a = parse()?;
    let opts = TunOptions {
        vnet_hdr: a.tun_offload,
        multi_queue: a.queues > 1,
        nonblocking: true,
    };
    let mut queues = Vec::new();
    let mut accepted = 0;
    for i in 0..a.queues {
        let tun = Tun::open(&a.tun, opts).map_err(|e| format!("opening TUN {}: {e}", a.tun))?;
        if a.tun_offload {
            accepted = tun.negotiate_offload(
                offload::CSUM
                    | offload::TSO4
                    | offload::TSO6
                    | offload::TSO_ECN
                    | offload::USO4
                    | offload::USO6,
            );
        }
        let sock = UdpSocket::bind(with_port(a.local, i))
            .map_err(|e| format!("binding {}: {e}", with_port(a.local, i)))?;
        let xf = AeadTestTransform::new(
            &a.key_out,
            &a.key_in,
            a.id_out,
            a.id_in,
            with_port(a.peer, i),
            i as u8,
        )
        .map_err(|e| format!("key: {e}"))?;
        queues.push((tun, sock, Arc::new(xf)));
    }
    let name = queues[0].0.name().to_string();
    ip(&["addr", "add", &a.addr, "dev", &name])?;
    if let Some(a6) = &a.addr6 {
        ip(&["addr", "add", a6, "dev", &name, "nodad"])?;
    }
    ip(&["link", "set", "dev", &name, "mtu", &a.mtu.to_string(), "up"])?;
    let cfg = IoConfig {
        udp: a.udp,
        udp_gro: a.udp_gro,
        tun_gro: a.tun_offload && accepted & offload::TSO4 != 0,
        recv_batch: a.batch,
        spin: a.spin,
        one_thread_per_queue: a.one_thread,
        ..IoConfig::default()
    };
    eprintln!(
        "dp-forward: {name} {} mtu {} queues {} tun-offloads {accepted:#x} udp {:?} udp-gro {} \
         transform aes-256-gcm test (not ESP); {} -> {}",
        a.addr, a.mtu, a.queues, cfg.udp, cfg.udp_gro, a.local, a.peer
    );
    let fwd = Forwarder::spawn(queues, cfg).map_err(|e| format!("starting workers: {e}"))?;
    loop {
        std::thread::sleep(Duration::from_secs(a.stats.max(1)));
        if a.stats > 0 {
            let c = fwd.counters();
            let l = |x: &std::sync::atomic::AtomicU64| x.load(Ordering::Relaxed);
            eprintln!(
                "dp-forward: tun_reads {} segs {} udp_tx {} tx_calls {} udp_rx {} rx_calls {} \
                 tun_tx {} tun_writes {} drop_out {} drop_in {} errors {}",
                l(&c.tun_reads),
                l(&c.tun_segments),
                l(&c.udp_tx),
                l(&c.udp_tx_calls),
                l(&c.udp_rx),
                l(&c.udp_rx_calls),
                l(&c.tun_tx_packets),
                l(&c.tun_writes),
                l(&c.drop_outbound),
                l(&c.drop_inbound),
                l(&c.errors)
            );
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dp-forward: {e}");
            ExitCode::from(2)
        }
    }
}
