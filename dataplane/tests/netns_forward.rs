//! End to end through the real kernel: two network namespaces joined by a
//! veth, `dp-forward` (the forwarding loop with the AES-GCM test
//! transform, TUN offloads, UDP GSO/GRO) on each side, and traffic
//! through the tunnel that checks every byte:
//!
//! - ping, and a ping that fills the 1400-byte TUN MTU exactly;
//! - over IPv4 and IPv6 (inner), a TCP transfer each way of a pseudo-random stream, verified byte by
//!   byte at the far end (the kernel hands us TSO super-packets, the far
//!   side coalesces; any checksum or sequence mistake stalls or corrupts
//!   the stream);
//! - a UDP GSO send through the tunnel (USO: the TUN hands us a UDP
//!   super-datagram), received as five datagrams of 1000 bytes;
//! - the receiving side's counters show coalesced TUN writes and no drops.
//!
//! Needs root (namespaces); without it the test says SKIPPED and passes.
//! The helpers run inside the namespaces are this test binary itself,
//! re-executed with `--ignored --exact helper_*`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhub_dataplane::sys::udp::SendBatch;

const BYTES: u64 = 16 << 20;

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The namespaces and everything in them; removed on drop (pass, fail or
/// panic).
struct Lab {
    ns: [String; 2],
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.ns {
            let pids = Command::new("ip").args(["netns", "pids", ns]).output();
            if let Ok(o) = pids {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            ip(&["netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn in_ns(ns: &str, prog: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns, prog])
        .args(args)
        .output()
        .expect("ip netns exec")
}

fn helper(ns: &str, name: &str, env: &[(&str, String)]) -> Command {
    let exe = std::env::current_exe().expect("test binary");
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(exe).args([
        "--ignored",
        "--exact",
        name,
        "--nocapture",
        "--test-threads",
        "1",
    ]);
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// Byte `i` of the test stream: byte `i % 8` of splitmix64(i / 8). Both
/// ends compute it from the position alone.
fn fill(pos: u64, buf: &mut [u8]) {
    for (k, b) in buf.iter_mut().enumerate() {
        let i = pos + k as u64;
        let mut z = (i / 8).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        *b = z.to_le_bytes()[(i % 8) as usize];
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} unset: helper_* are run by forwards_through_two_namespaces")
    })
}

#[test]
#[ignore = "helper: run inside a namespace by forwards_through_two_namespaces"]
fn helper_sink() {
    let tcp = TcpListener::bind(env("DP_TCP")).unwrap();
    let udp = UdpSocket::bind(env("DP_UDP")).unwrap();
    println!("READY");
    std::io::stdout().flush().unwrap();
    tcp.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut s = loop {
        match tcp.accept() {
            Ok((s, _)) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("no TCP connection within 20 s: {e}"),
        }
    };
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (mut want, mut got) = (vec![0u8; 65536], vec![0u8; 65536]);
    let mut total = 0u64;
    loop {
        let n = s.read(&mut got).unwrap();
        if n == 0 {
            break;
        }
        fill(total, &mut want[..n]);
        assert_eq!(got[..n], want[..n], "TCP stream corrupted at byte {total}");
        total += n as u64;
    }
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sizes = Vec::new();
    let mut buf = [0u8; 2000];
    for i in 0..5u8 {
        let (n, _) = udp.recv_from(&mut buf).unwrap();
        assert!(buf[..n].iter().all(|&b| b == i), "UDP datagram {i} content");
        sizes.push(n);
    }
    println!("SINK {total} {sizes:?}");
}

#[test]
#[ignore = "helper: run inside a namespace by forwards_through_two_namespaces"]
fn helper_source() {
    let to = env("DP_TCP").parse().unwrap();
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut left = BYTES;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        fill(BYTES - left, &mut buf[..n]);
        s.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    drop(s);
    // Five 1000-byte datagrams in one UDP GSO send (UDP_SEGMENT).
    let to: std::net::SocketAddr = env("DP_UDP").parse().unwrap();
    let any = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
    let udp = UdpSocket::bind(any).unwrap();
    let mut data = vec![0u8; 5000];
    for (i, c) in data.chunks_mut(1000).enumerate() {
        c.fill(i as u8);
    }
    let mut batch = SendBatch::new(1);
    batch.push(0, 5000, 1000, env("DP_UDP").parse().unwrap());
    let (sent, err) = batch.send(udp.as_raw_fd(), &data);
    assert_eq!((sent, err.map(|e| e.to_string())), (1, None));
    println!("SOURCE {BYTES}");
}

fn transfer(lab: &Lab, from: usize, to: usize, to_addr: &str) {
    let tcp = format!("{to_addr}:7001");
    let udp = format!("{to_addr}:7002");
    let mut sink = helper(
        &lab.ns[to],
        "helper_sink",
        &[("DP_TCP", tcp.clone()), ("DP_UDP", udp.clone())],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut out = BufReader::new(sink.stdout.take().unwrap());
    // libtest prints its own lines first.
    let mut line = String::new();
    while !line.contains("READY") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "sink exited before READY"
        );
    }
    let src = helper(
        &lab.ns[from],
        "helper_source",
        &[("DP_TCP", tcp), ("DP_UDP", udp)],
    )
    .output()
    .unwrap();
    assert!(
        String::from_utf8_lossy(&src.stdout).contains(&format!("SOURCE {BYTES}")),
        "source: {}{}",
        String::from_utf8_lossy(&src.stdout),
        String::from_utf8_lossy(&src.stderr)
    );
    let mut text = String::new();
    out.read_to_string(&mut text).unwrap();
    let st = sink.wait().unwrap();
    assert!(st.success(), "sink failed: {text}");
    assert!(
        text.contains(&format!("SINK {BYTES} [1000, 1000, 1000, 1000, 1000]")),
        "sink said: {text}"
    );
}

/// The last stats line of a dp-forward log, as name → value.
fn last_stats(log: &PathBuf) -> std::collections::HashMap<String, u64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("tun_writes"))
        .unwrap_or("");
    let words: Vec<&str> = line
        .trim_start_matches("dp-forward: ")
        .split_whitespace()
        .collect();
    words
        .chunks(2)
        .filter_map(|p| Some((p[0].to_string(), p.get(1)?.parse().ok()?)))
        .collect()
}

#[test]
fn forwards_through_two_namespaces() {
    if !is_root() {
        println!("SKIPPED forwards_through_two_namespaces: needs root for network namespaces");
        return;
    }
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("anyhub-dp-test-{pid}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut lab = Lab {
        ns: [format!("dpt{pid}a"), format!("dpt{pid}b")],
        dir: dir.clone(),
        children: Vec::new(),
    };
    let (va, vb) = (format!("dva{pid}"), format!("dvb{pid}"));
    assert!(ip(&["netns", "add", &lab.ns[0]]) && ip(&["netns", "add", &lab.ns[1]]));
    assert!(ip(&[
        "link", "add", &va, "netns", &lab.ns[0], "type", "veth", "peer", "name", &vb, "netns",
        &lab.ns[1]
    ]));
    for (ns, dev, addr) in [
        (&lab.ns[0], &va, "198.51.100.2/24"),
        (&lab.ns[1], &vb, "198.51.100.1/24"),
    ] {
        assert!(ip(&["-n", ns, "addr", "add", addr, "dev", dev]));
        assert!(ip(&["-n", ns, "link", "set", dev, "up"]));
        assert!(ip(&["-n", ns, "link", "set", "lo", "up"]));
    }
    let (k1, k2) = ("11".repeat(36), "22".repeat(36));
    let sides = [
        (
            0,
            "10.40.0.1/24",
            "fd00:40::1/64",
            "198.51.100.2:4500",
            "198.51.100.1:4500",
            &k1,
            &k2,
            "1",
            "2",
        ),
        (
            1,
            "10.40.0.2/24",
            "fd00:40::2/64",
            "198.51.100.1:4500",
            "198.51.100.2:4500",
            &k2,
            &k1,
            "2",
            "1",
        ),
    ];
    let mut logs = Vec::new();
    for (i, addr, addr6, local, peer, ko, ki, io, ii) in sides {
        let log = dir.join(format!("dp-forward-{i}.log"));
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns[i],
                env!("CARGO_BIN_EXE_dp-forward"),
            ])
            .args([
                "--tun", "dpt0", "--addr", addr, "--addr6", addr6, "--local", local, "--peer", peer,
            ])
            .args([
                "--key-out",
                ko,
                "--key-in",
                ki,
                "--id-out",
                io,
                "--id-in",
                ii,
            ])
            .args(["--queues", "2", "--stats", "1"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        lab.children.push(child);
        logs.push(log);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !in_ns(&lab.ns[0], "ping", &["-c1", "-W1", "10.40.0.2"])
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "no ping through the tunnel: {:?}",
            std::fs::read_to_string(&logs[0])
        );
    }
    // 1372 bytes of ICMP payload + 28 = the 1400-byte MTU, DF set.
    let big = in_ns(
        &lab.ns[1],
        "ping",
        &["-c2", "-W2", "-s", "1372", "-M", "do", "10.40.0.1"],
    );
    assert!(
        big.status.success(),
        "MTU-sized ping: {}",
        String::from_utf8_lossy(&big.stdout)
    );

    transfer(&lab, 0, 1, "10.40.0.2");
    transfer(&lab, 1, 0, "10.40.0.1");
    transfer(&lab, 0, 1, "[fd00:40::2]");
    transfer(&lab, 1, 0, "[fd00:40::1]");

    std::thread::sleep(Duration::from_millis(1300));
    for log in &logs {
        let s = last_stats(log);
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert_eq!(s.get("drop_in"), Some(&0), "{text}");
        assert_eq!(s.get("drop_out"), Some(&0), "{text}");
        assert_eq!(s.get("errors"), Some(&0), "{text}");
        // Offloads at work: the kernel handed us super-packets (more
        // segments than reads) and we wrote coalesced ones (more packets
        // than writes).
        let g = |k: &str| *s.get(k).unwrap_or(&0);
        assert!(
            g("segs") > 2 * g("tun_reads"),
            "no TSO super-packets: {text}"
        );
        assert!(g("tun_tx") > 2 * g("tun_writes"), "no coalescing: {text}");
        assert!(g("udp_tx") > 2 * g("tx_calls"), "no batched sends: {text}");
    }
}
