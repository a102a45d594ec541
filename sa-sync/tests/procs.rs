//! Several `sa-sync-node` processes on loopback QUIC:
//! - kill -9 a node while it publishes: the others hold every record whose
//!   barrier (one other node) it saw reached;
//! - restart it (empty, new incarnation): it catches up;
//! - cut it off with nftables (a real partition on loopback), write on
//!   both sides, heal: all converge.

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
    fn spawn(dir: &Path, index: u16, ports: &[u16], first: bool, spi_base: u32) -> Proc {
        Proc::spawn_with(dir, index, ports, first, spi_base, &[])
    }

    fn spawn_with(
        dir: &Path,
        index: u16,
        ports: &[u16],
        first: bool,
        spi_base: u32,
        extra: &[&str],
    ) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sa-sync-node"));
        cmd.arg("run")
            .args(extra)
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
            ])
            .args(["--idle-ms", "1000", "--spi-base", &spi_base.to_string()]);
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
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
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
        assert!(p.next().contains("ready"));
        p
    }

    fn next(&mut self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(30))
            .expect("a line from the node")
    }

    fn ask(&mut self, cmd: &str) -> serde_json::Value {
        writeln!(self.stdin, "{cmd}").unwrap();
        serde_json::from_str(&self.next()).unwrap()
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nftables rules dropping a port's loopback traffic; removed on drop.
struct Partition(String);

impl Partition {
    fn cut(port: u16) -> Partition {
        let table = format!("anyhub_sync_{}", std::process::id());
        let script = format!(
            "add table inet {table}\n\
             add chain inet {table} out {{ type filter hook output priority 0; }}\n\
             add rule inet {table} out udp dport {port} drop\n\
             add rule inet {table} out udp sport {port} drop\n"
        );
        let mut nft = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft (nftables) is needed for the partition");
        nft.stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(
            nft.wait().unwrap().success(),
            "nft refused the partition rules"
        );
        Partition(table)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.0])
            .status();
    }
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_ports(n: usize) -> Vec<u16> {
    let socks: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    socks
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn hash(p: &mut Proc) -> (u64, u64) {
    let s = p.ask("status");
    (
        s["table_hash"].as_u64().unwrap(),
        s["live"].as_u64().unwrap(),
    )
}

fn connected(p: &mut Proc) -> usize {
    let s = p.ask("status");
    s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["connected"] == true)
        .count()
}

#[test]
fn kill_restart_partition_heal() {
    let dir =
        TempDir(std::env::temp_dir().join(format!("anyhub-sync-procs-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    anyhub_sa_sync::fleet::init(&dir.0).unwrap();
    for i in 1..=3 {
        anyhub_sa_sync::fleet::add_node(&dir.0, i, &format!("edge{i}")).unwrap();
    }
    let ports = free_ports(3);
    let mut n1 = Proc::spawn(&dir.0, 1, &ports, true, 1);
    let mut n2 = Proc::spawn(&dir.0, 2, &ports, false, 1);
    let mut n3 = Proc::spawn(&dir.0, 3, &ports, false, 1);
    for p in [&mut n1, &mut n2, &mut n3] {
        wait_for("a full mesh", Duration::from_secs(10), || connected(p) == 2);
    }

    // kill -9 in the middle of a stream: 4000 SAs at 2000/s, each waiting
    // for one other node; the node dies after ~300 acknowledged.
    n3.send("pub 4000 2000 3000 one 1");
    let mut acked = Vec::new();
    while acked.len() < 300 {
        let l = n3.next();
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        acked.push(v["acked"].as_u64().expect("an acked line"));
    }
    n3.child.kill().unwrap();
    n3.child.wait().unwrap();
    while let Ok(l) = n3.lines.try_recv() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) {
            if let Some(spi) = v["acked"].as_u64() {
                acked.push(spi);
            }
        }
    }
    drop(n3);
    let list: Vec<String> = acked.iter().map(u64::to_string).collect();
    let missing_cmd = format!("missing {}", list.join(" "));
    // Each acknowledged record reached at least one survivor; anti-entropy
    // brings it to the other.
    for p in [&mut n1, &mut n2] {
        wait_for(
            "every acknowledged record on both survivors",
            Duration::from_secs(15),
            || {
                p.ask(&missing_cmd)["missing"]
                    .as_array()
                    .unwrap()
                    .is_empty()
            },
        );
    }
    wait_for("survivors converge", Duration::from_secs(15), || {
        hash(&mut n1) == hash(&mut n2)
    });
    let (_, live_before) = hash(&mut n1);
    assert!(live_before >= acked.len() as u64);

    // Restart: empty, new incarnation → snapshot, then the stream.
    let mut n3 = Proc::spawn(&dir.0, 3, &ports, false, 100_000);
    wait_for(
        "the restarted node catches up",
        Duration::from_secs(20),
        || hash(&mut n3) == hash(&mut n1),
    );
    assert!(n3.ask(&missing_cmd)["missing"]
        .as_array()
        .unwrap()
        .is_empty());

    // Partition node 3 away, write on both sides, heal.
    let cut = Partition::cut(ports[2]);
    wait_for(
        "node 3 notices the partition",
        Duration::from_secs(10),
        || connected(&mut n3) == 0,
    );
    assert_eq!(n1.ask("pub 500 0 0 all 0")["published"], 500);
    assert_eq!(n3.ask("pub 300 0 0 all 0")["published"], 300);
    std::thread::sleep(Duration::from_millis(500));
    let (_, l1) = hash(&mut n1);
    let (_, l3) = hash(&mut n3);
    assert_eq!(l1, live_before + 500, "node 1 has not seen node 3's writes");
    assert_eq!(l3, live_before + 300, "node 3 has not seen node 1's writes");
    drop(cut);
    wait_for("convergence after heal", Duration::from_secs(20), || {
        let h1 = hash(&mut n1);
        h1 == hash(&mut n2) && h1 == hash(&mut n3) && h1.1 == live_before + 800
    });
}

fn counter(p: &mut Proc, name: &str) -> u64 {
    p.ask("status")["counters"][name].as_u64().unwrap()
}

fn upstream(p: &mut Proc) -> Option<u64> {
    let s = p.ask("status");
    s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["upstream"] == true && p["connected"] == true)
        .and_then(|p| p["peer"].as_u64())
}

#[test]
fn relays_fail_over_and_barriers_cross_them() {
    // Fan-out mode over real QUIC: relays 2 and 3, leaves 1, 4 and 5 (each
    // dials both relays). Barriers on every other node are reached with
    // acknowledgements through the relays; kill -9 leaf 4's upstream
    // relay → leaf 4 follows the other relay, receives the new records
    // (not the table again) and converges; the relay restarts → all five
    // converge.
    let dir =
        TempDir(std::env::temp_dir().join(format!("anyhub-sync-relay-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    anyhub_sa_sync::fleet::init(&dir.0).unwrap();
    for i in 1..=5 {
        anyhub_sa_sync::fleet::add_node(&dir.0, i, &format!("edge{i}")).unwrap();
    }
    let ports = free_ports(5);
    let args = |i: u16| -> Vec<&'static str> {
        match i {
            2 => vec!["--relay", "--relays=3"],
            3 => vec!["--relay", "--relays=2"],
            4 => vec!["--relays=3,2"],
            _ => vec!["--relays=2,3"],
        }
    };
    let spawn =
        |i: u16, first: bool, base: u32| Proc::spawn_with(&dir.0, i, &ports, first, base, &args(i));
    let mut nodes: Vec<Option<Proc>> = (1..=5).map(|i| Some(spawn(i, i == 1, 1))).collect();
    let want = |i: usize| if i == 2 || i == 3 { 4 } else { 2 };
    for (i, p) in nodes.iter_mut().enumerate() {
        let p = p.as_mut().unwrap();
        wait_for("the fan-out topology", Duration::from_secs(10), || {
            connected(p) == want(i + 1)
        });
    }
    let r = nodes[0].as_mut().unwrap().ask("pub 300 500 3000 n4 0");
    assert_eq!(r["reached"], 300, "barriers through relays: {r}");
    let all_equal = |nodes: &mut Vec<Option<Proc>>, live: u64| {
        let hs: Vec<(u64, u64)> = nodes.iter_mut().flatten().map(hash).collect();
        hs.iter().all(|h| *h == hs[0]) && hs[0].1 == live
    };
    wait_for("convergence", Duration::from_secs(10), || {
        all_equal(&mut nodes, 300)
    });
    let up = upstream(nodes[3].as_mut().unwrap()).expect("leaf 4 has an upstream") as usize;
    let before = counter(nodes[3].as_mut().unwrap(), "records_received");
    // kill -9 it.
    let mut dead = nodes[up - 1].take().unwrap();
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    drop(dead);
    assert_eq!(
        nodes[4].as_mut().unwrap().ask("pub 200 0 0 all 0")["published"],
        200
    );
    wait_for("leaf 4 fails over", Duration::from_secs(10), || {
        upstream(nodes[3].as_mut().unwrap()).is_some_and(|u| u as usize != up)
    });
    wait_for(
        "convergence without the relay",
        Duration::from_secs(15),
        || all_equal(&mut nodes, 500),
    );
    assert_eq!(counter(nodes[3].as_mut().unwrap(), "failovers"), 1);
    let got = counter(nodes[3].as_mut().unwrap(), "records_received") - before;
    assert!(
        got < 400,
        "after failover leaf 4 received {got} records for 200 new ones"
    );
    // The relay comes back empty and catches up.
    nodes[up - 1] = Some(spawn(up as u16, false, 1));
    wait_for(
        "convergence with the relay back",
        Duration::from_secs(20),
        || all_equal(&mut nodes, 500),
    );
}
