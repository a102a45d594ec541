//! A stand-alone sync node, for the multi-process tests and `bench-sync`,
//! and the fleet certificate commands.
//!
//! ```text
//! sa-sync-node fleet init --dir D
//! sa-sync-node fleet add-node --dir D --index 3 --name edge3
//! sa-sync-node run --dir D --index 3 --name edge3 --listen 127.0.0.1:7003 \
//!     --peer 1=127.0.0.1:7001 --peer 2=127.0.0.1:7002 [--first] \
//!     [--relay] [--relays 1,2]
//! ```
//!
//! Fan-out mode: `--relay` makes this node a relay (it meshes with the
//! other relays named by `--relays` and serves the leaves that dial it); a
//! leaf names its upstream relays with `--relays`, in order of preference.
//! `--peer` still lists every fleet member (barriers count them).
//!
//! `run` reads commands on stdin and answers each with one JSON line:
//! `pub COUNT RATE BARRIER_MS WAIT ECHO` (publish COUNT child SAs at RATE/s,
//! 0 = as fast as possible; with BARRIER_MS > 0 each waits for WAIT =
//! all|one|quorum|nK (K nodes); ECHO 1 prints `{"acked":spi}` per barrier reached),
//! `status`, `missing SPI…` (which of these are not live here), `wait LIVE TIMEOUT_MS` (until the table holds LIVE live SAs),
//! `quit`.

use anyhub_sa_sync::pb::{self, record::Body};
use anyhub_sa_sync::quic::{self, Bus, BusConfig, Identity};
use anyhub_sa_sync::{fleet, BarrierOutcome, Config, Key, WaitFor};
use clap::{Parser, Subcommand};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fleet certificates.
    Fleet {
        #[command(subcommand)]
        cmd: FleetCmd,
    },
    /// Run a node, commands on stdin.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    index: u16,
    #[arg(long)]
    name: String,
    #[arg(long)]
    listen: SocketAddr,
    /// INDEX=ADDR, one per other fleet member.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// The first node of a new fleet (no snapshot to take).
    #[arg(long)]
    first: bool,
    #[arg(long, default_value_t = 3000)]
    idle_ms: u64,
    /// The first SPI counter (low 20 bits) this run publishes.
    #[arg(long, default_value_t = 1)]
    spi_base: u32,
    /// Fan-out mode: this node is a relay.
    #[arg(long)]
    relay: bool,
    /// Fan-out mode: a leaf's upstream relays (in order of preference), or
    /// a relay's fellow relays.
    #[arg(long, value_delimiter = ',')]
    relays: Vec<u16>,
    /// Records per batch at most (Config::batch).
    #[arg(long)]
    batch: Option<usize>,
    /// Records in flight per subscriber (Config::window).
    #[arg(long)]
    window: Option<u32>,
}

#[derive(Subcommand)]
enum FleetCmd {
    /// A new fleet CA in DIR (ca.pem, ca.key).
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// A node certificate (NAME.pem, NAME.key) signed by DIR's CA.
    AddNode {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        index: u16,
        #[arg(long)]
        name: String,
    },
}

fn out(v: serde_json::Value) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{v}");
    let _ = o.flush();
}

/// This process's resident set (KiB), from /proc.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// A child SA as a real one looks on the bus (keys, selectors, addresses).
fn child_sa(index: u16, spi: u32) -> Body {
    Body::ChildSa(pb::ChildSa {
        tunnel: "site-a".into(),
        ike_spi_i: u64::from(spi) << 8,
        ike_spi_r: u64::from(spi) << 16,
        spi_in: spi,
        spi_out: spi ^ 0x5a5a_5a5a,
        algorithms: Some(pb::Algorithms {
            protocol: 3,
            encr: 20,
            key_bits: 256,
            ..Default::default()
        }),
        keys_in: Some(pb::DirectionKeys {
            encr: vec![0x11; 36],
            integ: Vec::new(),
            has_integ: false,
        }),
        keys_out: Some(pb::DirectionKeys {
            encr: vec![0x22; 36],
            integ: Vec::new(),
            has_integ: false,
        }),
        local_ts: vec![pb::Selector {
            ts_type: 7,
            end_port: 65535,
            start_addr: vec![10, 0, 0, 0],
            end_addr: vec![10, 0, 255, 255],
            ..Default::default()
        }],
        remote_ts: vec![pb::Selector {
            ts_type: 7,
            end_port: 65535,
            start_addr: vec![10, 1, 0, 0],
            end_addr: vec![10, 1, 255, 255],
            ..Default::default()
        }],
        lifetime_ms: 3_600_000,
        local: Some(pb::Address {
            ip: vec![192, 0, 2, 1],
            port: 4500,
        }),
        remote: Some(pb::Address {
            ip: vec![198, 51, 100, 7],
            port: 4500,
        }),
        encap: true,
        rekey_of: 0,
        owner: u32::from(index),
    })
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn publish(bus: &Bus, index: u16, next: &mut u32, args: &[&str]) -> serde_json::Value {
    let num = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (count, rate, barrier_ms) = (num(0, 1), num(1, 0), num(2, 0));
    let wait = match args.get(3).copied().unwrap_or("all") {
        "one" => WaitFor::Nodes(1),
        "quorum" => WaitFor::Quorum,
        w if w.starts_with('n') => WaitFor::Nodes(w[1..].parse().unwrap_or(1)),
        _ => WaitFor::All,
    };
    let echo = num(4, 0) == 1;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        if let Some(us) = (i * 1_000_000).checked_div(rate) {
            let due = start + Duration::from_micros(us);
            tokio::time::sleep_until(due.into()).await;
        }
        let spi = (u32::from(index) << 20) | (*next & 0xf_ffff);
        *next += 1;
        let expires = quic::now_ms() + 3_600_000;
        let body = child_sa(index, spi);
        if barrier_ms > 0 {
            let bus = bus.clone();
            let wait = wait.clone();
            tasks.spawn(async move {
                let t = Instant::now();
                let r = bus
                    .publish_with_barrier(Key::ChildSa(spi), body, expires, wait, barrier_ms)
                    .await;
                let reached = matches!(&r, Ok(b) if b.outcome == BarrierOutcome::Reached);
                if reached && echo {
                    out(serde_json::json!({ "acked": spi }));
                }
                (reached, t.elapsed().as_secs_f64() * 1000.0)
            });
        } else if bus.publish(Key::ChildSa(spi), body, expires).await.is_err() {
            return serde_json::json!({ "error": "publish refused" });
        }
    }
    let mut lat = Vec::new();
    let mut timed_out = 0;
    while let Some(r) = tasks.join_next().await {
        let (reached, ms) = r.unwrap_or((false, 0.0));
        if reached {
            lat.push(ms);
        } else {
            timed_out += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    serde_json::json!({
        "published": count,
        "elapsed_s": elapsed,
        "reached": lat.len(),
        "timed_out": timed_out,
        "p50_ms": pct(&lat, 0.5),
        "p99_ms": pct(&lat, 0.99),
        "max_ms": lat.last().copied().unwrap_or(0.0),
    })
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        dir,
        index,
        name,
        listen,
        peers,
        first,
        idle_ms,
        spi_base,
        relay,
        relays,
        batch,
        window,
    } = a;
    let identity = Identity::load(&dir, &name)?;
    let mut peer_list = Vec::new();
    for p in &peers {
        let (i, a) = p
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--peer {p}: want INDEX=ADDR"))?;
        peer_list.push((i.parse()?, a.parse()?));
    }
    let incarnation = quic::now_ms() ^ (u64::from(std::process::id()) << 40);
    let mut core = Config::new(index, incarnation);
    core.relay = relay;
    core.relays = relays;
    if let Some(b) = batch {
        core.batch = b.max(1);
    }
    if let Some(w) = window {
        core.window = w.max(1);
    }
    let bus = Bus::start(
        BusConfig {
            core,
            name,
            listen,
            peers: peer_list,
            identity,
            idle_timeout: Duration::from_millis(idle_ms),
        },
        |_| {},
    )?;
    if first {
        bus.set_bootstrapped();
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    out(serde_json::json!({ "ready": index, "listen": bus.local_addr().to_string() }));
    let mut next = spi_base;
    while let Some(line) = rx.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("pub") => out(publish(&bus, index, &mut next, &words[1..]).await),
            Some("status") => {
                let s = bus.status().await?;
                let mut v = serde_json::to_value(&s)?;
                v["rss_kib"] = rss_kib().into();
                out(v);
            }
            Some("wait") => {
                let want: usize = words.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                let timeout: u64 = words.get(2).and_then(|s| s.parse().ok()).unwrap_or(10_000);
                let t = Instant::now();
                let mut live = 0;
                while t.elapsed() < Duration::from_millis(timeout) {
                    live = bus.status().await?.live;
                    if live >= want {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                out(serde_json::json!({ "live": live, "ms": t.elapsed().as_secs_f64() * 1000.0 }));
            }
            Some("missing") => {
                let spis: Vec<u32> = words[1..].iter().filter_map(|s| s.parse().ok()).collect();
                let held = bus
                    .holds(spis.iter().map(|&s| Key::ChildSa(s)).collect())
                    .await?;
                let missing: Vec<u32> = spis
                    .iter()
                    .zip(held)
                    .filter(|(_, h)| !h)
                    .map(|(s, _)| *s)
                    .collect();
                out(serde_json::json!({ "missing": missing }));
            }
            Some("quit") | None => break,
            Some(other) => out(serde_json::json!({ "error": format!("unknown command {other}") })),
        }
    }
    bus.close();
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Fleet { cmd } => match cmd {
            FleetCmd::Init { dir } => {
                fleet::init(&dir)?;
                println!("fleet CA written to {}", dir.display());
            }
            FleetCmd::AddNode { dir, index, name } => {
                let (c, k) = fleet::add_node(&dir, index, &name)?;
                println!("{} {}", c.display(), k.display());
            }
        },
        Cmd::Run(a) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(run(a))?;
        }
    }
    Ok(())
}
