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

impl Proc {
    fn spawn(bin: &Path, dir: &Path, index: u16, ports: &[u16], first: bool) -> Proc {
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
        self.lines
            .recv_timeout(Duration::from_secs(300))
            .expect("a line from the node")
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
    p50: f64,
    p99: f64,
    max: f64,
    timed_out: u64,
    burst_p99: f64,
    fanout: f64,
    catchup_s: f64,
    mib_per_100k: f64,
}

fn fleet(bin: &Path, n: usize) -> Row {
    let dir = std::env::temp_dir().join(format!("anyhub-bench-sync-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    anyhub_sa_sync::fleet::init(&dir).expect("fleet init");
    for i in 1..=n + 1 {
        anyhub_sa_sync::fleet::add_node(&dir, i as u16, &format!("edge{i}")).expect("add-node");
    }
    let ports = free_ports(n + 1);
    let mut nodes: Vec<Proc> = (1..=n)
        .map(|i| Proc::spawn(bin, &dir, i as u16, &ports, i == 1))
        .collect();
    let t = Instant::now();
    for p in nodes.iter_mut() {
        loop {
            let s = p.ask("status");
            let up = s["peers"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|p| p["connected"] == true).count());
            if up == n - 1 {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "mesh did not form");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let rss0 = f(&nodes[n - 1].ask("status"), "rss_kib");
    // Every running node (the fresh one of step 4 is a fleet member that
    // is not up yet, so not "all").
    let others = n - 1;
    let paced = nodes[0].ask(&format!("pub 10000 1000 5000 n{others} 0"));
    let burst = nodes[0].ask(&format!("pub 10000 0 5000 n{others} 0"));
    let fanout = 10_000.0 * (n as f64 - 1.0) / f(&burst, "elapsed_s");
    let fill = nodes[0].ask("pub 80000 0 0 all 0");
    assert_eq!(fill["published"], 80000, "{fill}");
    for p in nodes.iter_mut() {
        let w = p.ask("wait 100000 120000");
        assert_eq!(w["live"], 100000, "{w}");
    }
    let rss1 = f(&nodes[n - 1].ask("status"), "rss_kib");
    let t = Instant::now();
    let mut fresh = Proc::spawn(bin, &dir, (n + 1) as u16, &ports, false);
    let w = fresh.ask("wait 100000 120000");
    assert_eq!(w["live"], 100000, "{w}");
    let catchup_s = t.elapsed().as_secs_f64();
    drop(fresh);
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
    Row {
        nodes: n,
        p50: f(&paced, "p50_ms"),
        p99: f(&paced, "p99_ms"),
        max: f(&paced, "max_ms"),
        timed_out: paced["timed_out"].as_u64().unwrap_or(0)
            + burst["timed_out"].as_u64().unwrap_or(0),
        burst_p99: f(&burst, "p99_ms"),
        fanout,
        catchup_s,
        mib_per_100k: (rss1 - rss0) / 1024.0,
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() { vec![3, 16] } else { sizes };
    let bin: PathBuf = std::env::current_exe()
        .expect("exe")
        .with_file_name("sa-sync-node");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("sa-sync on loopback QUIC, {cores} cores; one process per node");
    let rows: Vec<Row> = sizes.iter().map(|&n| fleet(&bin, n)).collect();
    println!();
    println!(
        "| nodes | p50 ms | p99 ms | max ms | barrier timeouts | burst p99 ms | fan-out rec/s | catch-up 100k s | MiB / 100k SAs |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {} | {:.1} | {:.0} | {:.2} | {:.1} |",
            r.nodes,
            r.p50,
            r.p99,
            r.max,
            r.timed_out,
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
