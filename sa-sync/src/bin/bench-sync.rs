//! `make bench-sync`: fleets of `sa-sync-node` processes on loopback QUIC.
//!
//! Per fleet size N (default 3 and 16; `bench-sync 3 16 64`):
//! 1. node 1 publishes 10k child SAs at 1k/s, each with a barrier on all
//!    other nodes: publish → every node applied and acknowledged (p50, p99,
//!    max). This includes the acknowledgements' way back, so it is an upper
//!    bound on publish → applied-on-all.
//! 2. node 1 publishes 10k as fast as it can, barriers on all: records/s
//!    fanned out = 10k × (N − 1) / time until the last barrier.
//! 3. fill to 100k SAs; memory per 100k = RSS growth of a non-publishing
//!    node from empty to 100k;
//! 4. a fresh node joins: time from its start to holding all 100k.
//!
//! `bench-sync 3 16 64r`: a size with `r` runs in fan-out mode;
//! `--topology relay` (or `SYNC_TOPOLOGY=relay`): fan-out mode instead of a
//! full mesh. Nodes 2..=R+1 are relays (R = max(2, N/16)), meshed; every
//! other node (the publisher, node 1, included) is a leaf with two
//! upstream relays, assigned round robin. The barrier still waits for
//! every other node: acknowledgements come back through the relays.
//!
//! Prints a table, then one JSON line per fleet (the last one last).

use std::io::{BufRead, BufReader, Write};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Proc {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

/// Fan-out layout of a fleet of `n` (+1 fresh) nodes.
#[derive(Clone, Default)]
struct Topo {
    relays: Vec<u16>,
}

impl Topo {
    fn relay(n: usize) -> Topo {
        let r = (n / 16).max(2);
        Topo {
            relays: (2..=r as u16 + 1).collect(),
        }
    }

    fn is_relay(&self, i: u16) -> bool {
        self.relays.contains(&i)
    }

    /// A leaf's two upstream relays (round robin over the leaves).
    fn upstreams(&self, i: u16) -> Vec<u16> {
        if self.relays.is_empty() || self.is_relay(i) {
            return Vec::new();
        }
        let r = self.relays.len();
        let k = if i == 1 { 0 } else { usize::from(i) - r - 1 };
        vec![self.relays[k % r], self.relays[(k + 1) % r]]
    }

    /// How many connections node `i` has once the fleet of `n` is up.
    fn expected_peers(&self, i: u16, n: usize) -> usize {
        if self.relays.is_empty() {
            return n - 1;
        }
        if self.is_relay(i) {
            let leaves = (1..=n as u16)
                .filter(|&l| self.upstreams(l).contains(&i))
                .count();
            self.relays.len() - 1 + leaves
        } else {
            2
        }
    }
}

impl Proc {
    fn spawn(bin: &Path, dir: &Path, index: u16, ports: &[u16], first: bool, topo: &Topo) -> Proc {
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--dir")
            .arg(dir)
            .args([
                "--index",
                &index.to_string(),
                "--name",
                &format!("edge{index}"),
            ])
            .args([
                "--listen",
                &format!("127.0.0.1:{}", ports[usize::from(index) - 1]),
            ]);
        for (i, p) in ports.iter().enumerate() {
            if i + 1 != usize::from(index) {
                cmd.args(["--peer", &format!("{}=127.0.0.1:{p}", i + 1)]);
            }
        }
        if first {
            cmd.arg("--first");
        }
        if topo.is_relay(index) {
            let others: Vec<String> = topo
                .relays
                .iter()
                .filter(|&&r| r != index)
                .map(u16::to_string)
                .collect();
            cmd.arg("--relay")
                .arg(format!("--relays={}", others.join(",")));
        } else if !topo.relays.is_empty() {
            let up: Vec<String> = topo.upstreams(index).iter().map(u16::to_string).collect();
            cmd.arg(format!("--relays={}", up.join(",")));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sa-sync-node");
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut p = Proc {
            child,
            stdin,
            lines,
        };
        let ready = p.next();
        assert!(ready.contains("ready"), "{ready}");
        p
    }

    fn next(&mut self) -> String {
        match self.lines.recv_timeout(Duration::from_secs(300)) {
            Ok(l) => l,
            Err(e) => {
                // Not a panic: the usual cause is a machine too small for
                // the fleet (every node is a process on the same cores).
                eprintln!(
                    "bench-sync: a node did not answer within 300 s ({e}); with many nodes on few \
                     cores this is CPU exhaustion, not a protocol result"
                );
                std::process::exit(2);
            }
        }
    }

    fn ask(&mut self, cmd: &str) -> serde_json::Value {
        writeln!(self.stdin, "{cmd}").expect("node stdin");
        serde_json::from_str(&self.next()).expect("JSON")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_ports(n: usize) -> Vec<u16> {
    let socks: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();
    socks
        .iter()
        .map(|s| s.local_addr().expect("addr").port())
        .collect()
}

fn f(v: &serde_json::Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

struct Row {
    nodes: usize,
    topology: &'static str,
    p50: f64,
    p99: f64,
    max: f64,
    timed_out: u64,
    burst_timed_out: u64,
    burst_p99: f64,
    fanout: f64,
    catchup_s: f64,
    mib_per_100k: f64,
}

fn fleet(bin: &Path, n: usize, topo: &Topo) -> Row {
    let dir = std::env::temp_dir().join(format!("anyhub-bench-sync-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    anyhub_sa_sync::fleet::init(&dir).expect("fleet init");
    for i in 1..=n + 1 {
        anyhub_sa_sync::fleet::add_node(&dir, i as u16, &format!("edge{i}")).expect("add-node");
    }
    let ports = free_ports(n + 1);
    let mut nodes: Vec<Proc> = (1..=n)
        .map(|i| Proc::spawn(bin, &dir, i as u16, &ports, i == 1, topo))
        .collect();
    let t = Instant::now();
    for (i, p) in nodes.iter_mut().enumerate() {
        let want = topo.expected_peers(i as u16 + 1, n);
        loop {
            let s = p.ask("status");
            let up = s["peers"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|p| p["connected"] == true).count());
            if up == want {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "node {}: {up} of {want} peers up",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!("{n} nodes up in {:.1} s", t.elapsed().as_secs_f64());
    let rss0 = f(&nodes[n - 1].ask("status"), "rss_kib");
    // Every running node (the fresh one of step 4 is a fleet member that
    // is not up yet, so not "all").
    let others = n - 1;
    let paced = nodes[0].ask(&format!("pub 10000 1000 5000 n{others} 0"));
    let burst = nodes[0].ask(&format!("pub 10000 0 5000 n{others} 0"));
    let fanout = 10_000.0 * (n as f64 - 1.0) / f(&burst, "elapsed_s");
    let t = Instant::now();
    let fill = nodes[0].ask("pub 80000 0 0 all 0");
    assert_eq!(fill["published"], 80000, "{fill}");
    for p in nodes.iter_mut() {
        let w = p.ask("wait 100000 300000");
        assert_eq!(w["live"], 100000, "{w}");
    }
    eprintln!("{n} nodes hold 100k in {:.1} s", t.elapsed().as_secs_f64());
    let rss1 = f(&nodes[n - 1].ask("status"), "rss_kib");
    // Let the fill's last acknowledgements and digests settle: the catch-up
    // is measured on a quiet fleet.
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let mut fresh = Proc::spawn(bin, &dir, (n + 1) as u16, &ports, false, topo);
    let w = fresh.ask("wait 100000 120000");
    assert_eq!(w["live"], 100000, "{w}");
    let catchup_s = t.elapsed().as_secs_f64();
    let received = fresh.ask("status")["counters"]["records_received"]
        .as_u64()
        .unwrap_or(0);
    eprintln!("fresh node received {received} records for 100000");
    drop(fresh);
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
    Row {
        nodes: n,
        topology: if topo.relays.is_empty() {
            "mesh"
        } else {
            "relay"
        },
        p50: f(&paced, "p50_ms"),
        p99: f(&paced, "p99_ms"),
        max: f(&paced, "max_ms"),
        timed_out: paced["timed_out"].as_u64().unwrap_or(0),
        burst_timed_out: burst["timed_out"].as_u64().unwrap_or(0),
        burst_p99: f(&burst, "p99_ms"),
        fanout,
        catchup_s,
        mib_per_100k: (rss1 - rss0) / 1024.0,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let relay = args.iter().any(|a| a == "--topology=relay" || a == "relay")
        || std::env::var("SYNC_TOPOLOGY").is_ok_and(|t| t == "relay");
    // N: a full mesh (or relays with --topology relay); Nr: relays.
    let sizes: Vec<(usize, bool)> = args
        .iter()
        .filter_map(|a| match a.strip_suffix('r') {
            Some(n) => n.parse().ok().map(|n| (n, true)),
            None => a.parse().ok().map(|n| (n, relay)),
        })
        .collect();
    let sizes = if sizes.is_empty() {
        vec![(3, relay), (16, relay)]
    } else {
        sizes
    };
    let bin: PathBuf = std::env::current_exe()
        .expect("exe")
        .with_file_name("sa-sync-node");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("sa-sync on loopback QUIC, {cores} cores; one process per node");
    let rows: Vec<Row> = sizes
        .iter()
        .map(|&(n, relay)| {
            let topo = if relay {
                Topo::relay(n)
            } else {
                Topo::default()
            };
            fleet(&bin, n, &topo)
        })
        .collect();
    println!();
    println!(
        "| nodes | topology | p50 ms | p99 ms | max ms | barrier timeouts (paced / burst) | burst p99 ms | fan-out rec/s | catch-up 100k s | MiB / 100k SAs |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {} / {} | {:.1} | {:.0} | {:.2} | {:.1} |",
            r.nodes,
            r.topology,
            r.p50,
            r.p99,
            r.max,
            r.timed_out,
            r.burst_timed_out,
            r.burst_p99,
            r.fanout,
            r.catchup_s,
            r.mib_per_100k
        );
    }
    println!("(p50/p99/max: 10k SAs at 1k/s, publish → all nodes applied and acknowledged)");
    for r in &rows {
        println!(
            "{}",
            serde_json::json!({
                "bench": "sync",
                "nodes": r.nodes,
                "topology": r.topology,
                "p50_ms": (r.p50 * 100.0).round() / 100.0,
                "p99_ms": (r.p99 * 100.0).round() / 100.0,
                "max_ms": (r.max * 100.0).round() / 100.0,
                "fanout_records_per_s": r.fanout.round(),
                "catchup_100k_s": (r.catchup_s * 100.0).round() / 100.0,
                "mib_per_100k_sas": (r.mib_per_100k * 10.0).round() / 10.0,
            })
        );
    }
}
