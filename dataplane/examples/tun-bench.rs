//! `tun-bench`: how fast can packets cross TUN devices, by way of each TUN
//! implementation we could use? Two TUN devices, one in each of two
//! namespaces, bridged by this program (no crypto, no UDP): iperf3 from one
//! namespace to the other measures the TUN I/O path alone.
//!
//! ```text
//! tun-bench --mode tuntap|plain|passthrough|offload --ns-b NS [--mtu 1400] [--capture DIR]
//! ```
//! Run inside namespace A (`ip netns exec A tun-bench …`): it creates `tba`
//! (10.60.0.1/24, fd00:60::1/64) here and `tbb` (10.60.0.2/24,
//! fd00:60::2/64), moved to namespace B.
//!
//! - `tuntap`: the tun-tap 0.1.4 crate, one packet per read/write;
//! - `plain`: our `sys::tun::Tun` without vnet header, the same;
//! - `passthrough`: vnet header + TSO offloads, super-packets handed from
//!   one device to the other untouched (the upper bound);
//! - `offload`: vnet header + TSO, each super-packet segmented
//!   (`io::gso`) and coalesced again (`io::gro`) — the path a tunnel takes.
//!
//! `--capture DIR` writes the first super-packets read (vnet header
//! included) to DIR, for the unit tests' fixtures.

use std::io::IoSlice;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhub_dataplane::io::gro::Gro;
use anyhub_dataplane::io::gso::Segments;
use anyhub_dataplane::io::vnet::{self, VnetHdr, VNET_HDR_LEN};
use anyhub_dataplane::sys::tun::{offload, Tun, TunOptions};

fn ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "`ip {}` failed", args.join(" "));
}

trait Dev: Send + Sync {
    fn read(&self, buf: &mut [u8]) -> std::io::Result<usize>;
    fn write(&self, buf: &[u8]) -> std::io::Result<usize>;
    fn writev(&self, iov: &[IoSlice<'_>]) -> std::io::Result<usize>;
}

impl Dev for Tun {
    fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        Tun::read(self, buf)
    }
    fn write(&self, buf: &[u8]) -> std::io::Result<usize> {
        Tun::write(self, buf)
    }
    fn writev(&self, iov: &[IoSlice<'_>]) -> std::io::Result<usize> {
        self.write_vectored(iov)
    }
}

impl Dev for tun_tap::Iface {
    fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.recv(buf)
    }
    fn write(&self, buf: &[u8]) -> std::io::Result<usize> {
        self.send(buf)
    }
    fn writev(&self, _: &[IoSlice<'_>]) -> std::io::Result<usize> {
        unreachable!("tun-tap has no vnet header")
    }
}

/// Captures so far per kind: tcp4, tcp6, udp4, udp6.
static CAPTURED: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];

fn capture(dir: &Option<String>, raw: &[u8]) {
    let Some(dir) = dir else { return };
    let Some(h) = VnetHdr::parse(raw) else { return };
    let (k, kind) = match (h.gso(), raw.get(VNET_HDR_LEN).map(|b| b >> 4)) {
        (vnet::GSO_TCPV4, _) => (0, "tcp4"),
        (vnet::GSO_TCPV6, _) => (1, "tcp6"),
        (vnet::GSO_UDP_L4, Some(4)) => (2, "udp4"),
        (vnet::GSO_UDP_L4, Some(6)) => (3, "udp6"),
        _ => return,
    };
    // Skip the first few (slow start, small) and keep full-sized ones too.
    let n = CAPTURED[k].fetch_add(1, Ordering::Relaxed);
    if n < 3 || (k < 2 && n == 30) {
        let path = format!("{dir}/{kind}-{n}.bin");
        std::fs::write(&path, raw).expect("writing capture");
    }
}

fn bridge(mode: &str, src: Arc<dyn Dev>, dst: Arc<dyn Dev>, cap: Option<String>) {
    let mut buf = vec![0u8; 70_000];
    let mut segs = vec![0u8; 256 * 1024];
    let mut gro = Gro::new();
    loop {
        let n = match src.read(&mut buf) {
            Ok(n) => n,
            Err(_) => continue,
        };
        match mode {
            "tuntap" | "plain" => {
                let _ = dst.write(&buf[..n]);
            }
            "passthrough" => {
                capture(&cap, &buf[..n]);
                let _ = dst.write(&buf[..n]);
            }
            _ => {
                capture(&cap, &buf[..n]);
                let Some(h) = VnetHdr::parse(&buf[..n]) else {
                    continue;
                };
                let Ok(s) = Segments::new(&h, &mut buf[VNET_HDR_LEN..n]) else {
                    continue;
                };
                let mut at = 0;
                for i in 0..s.len() {
                    if let Some(l) = s.write(i, &mut segs[at..]) {
                        gro.push(&segs, at, l);
                        at += l;
                    }
                }
                gro.flush(&mut segs, |iov| dst.writev(iov));
            }
        }
    }
}

fn main() {
    let mut mode = String::from("offload");
    let mut ns_b = String::new();
    let mut mtu = String::from("1400");
    let mut cap = None;
    let mut it = std::env::args().skip(1);
    while let Some(f) = it.next() {
        let v = it.next().expect("flag needs a value");
        match f.as_str() {
            "--mode" => mode = v,
            "--ns-b" => ns_b = v,
            "--mtu" => mtu = v,
            "--capture" => cap = Some(v),
            _ => panic!("unknown flag {f}"),
        }
    }
    assert!(!ns_b.is_empty(), "--ns-b is required");
    let (a, b): (Arc<dyn Dev>, Arc<dyn Dev>) = match mode.as_str() {
        "tuntap" => (
            Arc::new(tun_tap::Iface::without_packet_info("tba", tun_tap::Mode::Tun).unwrap()),
            Arc::new(tun_tap::Iface::without_packet_info("tbb", tun_tap::Mode::Tun).unwrap()),
        ),
        "plain" | "passthrough" | "offload" => {
            let vnet = mode != "plain";
            let opts = TunOptions {
                vnet_hdr: vnet,
                ..TunOptions::default()
            };
            let ta = Tun::open("tba", opts).unwrap();
            let tb = Tun::open("tbb", opts).unwrap();
            if vnet {
                for t in [&ta, &tb] {
                    let got = t.negotiate_offload(
                        offload::CSUM
                            | offload::TSO4
                            | offload::TSO6
                            | offload::TSO_ECN
                            | offload::USO4
                            | offload::USO6,
                    );
                    eprintln!("tun-bench: {} offloads {got:#x}", t.name());
                }
            }
            (Arc::new(ta), Arc::new(tb))
        }
        _ => panic!("--mode tuntap|plain|passthrough|offload"),
    };
    ip(&["link", "set", "tbb", "netns", &ns_b]);
    ip(&["addr", "add", "10.60.0.1/24", "dev", "tba"]);
    ip(&["link", "set", "tba", "mtu", &mtu, "up"]);
    ip(&["-n", &ns_b, "addr", "add", "10.60.0.2/24", "dev", "tbb"]);
    ip(&["-n", &ns_b, "link", "set", "tbb", "mtu", &mtu, "up"]);
    ip(&["addr", "add", "fd00:60::1/64", "dev", "tba", "nodad"]);
    ip(&[
        "-n",
        &ns_b,
        "addr",
        "add",
        "fd00:60::2/64",
        "dev",
        "tbb",
        "nodad",
    ]);
    eprintln!("tun-bench: {mode} ready");
    let t = {
        let (a, b, m, c) = (a.clone(), b.clone(), mode.clone(), cap.clone());
        std::thread::spawn(move || bridge(&m, a, b, c))
    };
    bridge(&mode, b, a, cap);
    let _ = t.join();
}
