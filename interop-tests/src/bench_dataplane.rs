//! `interop bench-dataplane` (`make bench-dataplane`): TCP throughput
//! through each tunnel between two namespaces over a veth, all in one run,
//! iperf3 with 1 and 4 streams:
//!
//! - **anyhub**: for now `dp-forward` (the dataplane's I/O layer with the
//!   AES-256-GCM *test transform*, not ESP) on each side — labelled as
//!   such until anyhubd's own dataplane is wired in;
//! - **strongSwan** ↔ strongSwan, kernel-libipsec (userspace ESP-in-UDP),
//!   AES-256-GCM, openssl/aesni plugins ahead of the software ones;
//! - **anyhubd** ↔ anyhubd: both with `[dataplane]`, the site initiating
//!   with `force_encap` (ESP-in-UDP without a NAT), AES-256-GCM: the real
//!   daemon's ESP on both ends;
//! - **swan-anyhubd**: a strongSwan site (kernel-libipsec) → the real
//!   anyhubd with `[dataplane]`, IKE-negotiated ESP-in-UDP AES-256-GCM
//!   (anyhubd's ESP transform on one end; strongSwan bounds the rate);
//! - **boringtun** ↔ boringtun (userspace WireGuard, `boringtun-cli` +
//!   `wg`);
//! - the bare **veth**.
//!
//! Prints a table and, last, one JSON line (see `docs/benchmarks.md`). A
//! peer that cannot run (missing tool, no tunnel) is reported and `null`
//! in the JSON; the others still run. Hold the machine lock around the
//! whole run (the Makefile target does).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::lab::{self, Lab, Proc, HUB_ADDR, SITE_ADDR};
use crate::strongswan::{Charon, SwanConn};

/// One measured cell: Mbit/s received and TCP retransmits.
#[derive(Clone, Copy, Debug)]
struct Cell {
    mbps: f64,
    retr: u64,
}

/// A peer's results for 1 and 4 streams, or why it did not run.
struct Row {
    label: &'static str,
    one: Result<Cell>,
    four: Result<Cell>,
}

pub struct Options {
    pub seconds: u64,
}

/// Where a program is: `$VAR`, next to this binary, `~/.cargo/bin`, PATH.
fn find(var: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(d);
    }
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cargo/bin"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn ns_cmd(ns: &str, prog: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, prog]);
    c
}

/// Runs a short command in `ns` and fails with its output if it fails.
fn in_ns(ns: &str, prog: &str, args: &[&str]) -> Result<String> {
    let mut c = ns_cmd(ns, prog);
    c.args(args);
    let out = lab::run(&mut c, Duration::from_secs(15))?;
    if !out.success() {
        bail!(
            "`{prog} {}` in {ns} failed: {}",
            args.join(" "),
            out.text.trim()
        );
    }
    Ok(out.text)
}

fn ping_until(ns: &str, args: &[&str], within: Duration) -> Result<()> {
    lab::eventually(within, || {
        let mut a = vec!["-c1", "-W1"];
        a.extend_from_slice(args);
        in_ns(ns, "ping", &a).map(|_| ())
    })
    .context("no ping through the tunnel")
}

/// iperf3 from `client_ns` (bound to `src`) to a one-shot server on
/// `target` in `server_ns`.
fn iperf(lab: &Lab, dir: &Path, target: &str, src: &str, streams: u32, secs: u64) -> Result<Cell> {
    let mut server = ns_cmd(&lab.hub_ns, "iperf3");
    server.args(["-s", "-1", "-B", target]);
    let _server = Proc::spawn(
        "iperf3 server",
        server,
        &dir.join(format!("iperf3-server-{streams}.log")),
    )?;
    // Until the server listens.
    let mut out = None;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(150));
        let mut client = ns_cmd(&lab.site_ns, "iperf3");
        client.args(["-c", target, "-B", src, "-J", "-t", &secs.to_string()]);
        client.args(["-P", &streams.to_string()]);
        let o = lab::run(&mut client, Duration::from_secs(secs + 20))?;
        if o.success() {
            out = Some(o.text);
            break;
        }
        if !o.text.contains("Connection refused") {
            bail!("iperf3 failed: {}", o.text.trim());
        }
    }
    let text = out.ok_or_else(|| anyhow!("iperf3 server never answered"))?;
    let json_start = text.find('{').ok_or_else(|| anyhow!("no iperf3 JSON"))?;
    let mut de =
        serde_json::Deserializer::from_str(&text[json_start..]).into_iter::<serde_json::Value>();
    let v = de.next().ok_or_else(|| anyhow!("no iperf3 JSON"))??;
    let end = &v["end"];
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| anyhow!("iperf3 JSON without end.sum_received"))?;
    Ok(Cell {
        mbps: (bps / 1e6 * 10.0).round() / 10.0,
        retr: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    })
}

fn both(lab: &Lab, dir: &Path, target: &str, src: &str, secs: u64) -> (Result<Cell>, Result<Cell>) {
    let one = iperf(lab, dir, target, src, 1, secs);
    let four = iperf(lab, dir, target, src, 4, secs);
    (one, four)
}

fn random_hex(n: usize) -> Result<String> {
    let mut b = vec![0u8; n];
    use std::io::Read;
    fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn bench_veth(secs: u64) -> Result<(Result<Cell>, Result<Cell>)> {
    let lab = Lab::create(&[], &[], None)?;
    Ok(both(&lab, &lab.dir, HUB_ADDR, SITE_ADDR, secs))
}

fn bench_anyhub(secs: u64) -> Result<(Result<Cell>, Result<Cell>)> {
    let bin = find("DP_FORWARD", "dp-forward").ok_or_else(|| {
        anyhow!("dp-forward not found (cargo build --release -p anyhub-dataplane --bin dp-forward)")
    })?;
    let lab = Lab::create(&[], &[], None)?;
    let (k1, k2) = (random_hex(36)?, random_hex(36)?);
    let mut procs = Vec::new();
    for (ns, addr, local, peer, ko, ki, io, ii) in [
        (
            &lab.site_ns,
            "10.40.0.1/24",
            SITE_ADDR,
            HUB_ADDR,
            &k1,
            &k2,
            "1",
            "2",
        ),
        (
            &lab.hub_ns,
            "10.40.0.2/24",
            HUB_ADDR,
            SITE_ADDR,
            &k2,
            &k1,
            "2",
            "1",
        ),
    ] {
        let mut c = ns_cmd(ns, bin.to_str().ok_or_else(|| anyhow!("path"))?);
        c.args(["--tun", "dpf0", "--addr", addr, "--mtu", "1400"]);
        c.args([
            "--local",
            &format!("{local}:4500"),
            "--peer",
            &format!("{peer}:4500"),
        ]);
        c.args([
            "--key-out",
            ko,
            "--key-in",
            ki,
            "--id-out",
            io,
            "--id-in",
            ii,
        ]);
        procs.push(Proc::spawn(
            &format!("dp-forward in {ns}"),
            c,
            &lab.dir.join(format!("dp-forward-{ns}.log")),
        )?);
    }
    ping_until(&lab.site_ns, &["10.40.0.2"], Duration::from_secs(5))?;
    let r = both(&lab, &lab.dir, "10.40.0.2", "10.40.0.1", secs);
    for p in &mut procs {
        if p.exited().is_some() {
            bail!("dp-forward died: {}", lab::tail(&p.log, 5));
        }
    }
    Ok(r)
}

fn bench_strongswan(secs: u64) -> Result<(Result<Cell>, Result<Cell>)> {
    crate::strongswan::charon_binary()?;
    let lab = Lab::create(&[], &[], None)?;
    let site = Charon::start(&lab.site_ns, &lab.site_dir())?;
    let hub = Charon::start(&lab.hub_ns, &lab.hub_dir())?;
    let conn =
        |local: &str, remote: &str, lid: &str, rid: &str, lts: &str, rts: &str, start| SwanConn {
            name: "bench".into(),
            child: "bench".into(),
            local_addrs: local.into(),
            remote_addrs: remote.into(),
            proposals: vec!["aes256gcm16-prfsha256-x25519".into()],
            esp_proposals: vec!["aes256gcm16".into()],
            local_id: lid.into(),
            remote_id: rid.into(),
            psk: "bench-dataplane-psk".into(),
            local_ts: vec![lts.into()],
            remote_ts: vec![rts.into()],
            start,
            conn_extra: vec![],
            child_extra: vec![],
            pubkey: None,
        };
    hub.load(&[conn(
        HUB_ADDR,
        "%any",
        "hub",
        "site",
        "10.20.0.0/24",
        "10.10.0.0/24",
        false,
    )])?;
    site.load(&[conn(
        SITE_ADDR,
        HUB_ADDR,
        "site",
        "hub",
        "10.10.0.0/24",
        "10.20.0.0/24",
        true,
    )])?;
    ping_until(
        &lab.site_ns,
        &["-I", "10.10.0.1", "10.20.0.1"],
        Duration::from_secs(15),
    )?;
    let r = both(&lab, &lab.dir, "10.20.0.1", "10.10.0.1", secs);
    drop((site, hub));
    Ok(r)
}

/// strongSwan site (kernel-libipsec, as in the interop cases) → the real
/// anyhubd with its `[dataplane]`: IKE-negotiated ESP-in-UDP AES-256-GCM
/// through anyhubd's own ESP transform. The strongSwan end bounds it.
fn bench_swan_anyhubd(secs: u64) -> Result<(Result<Cell>, Result<Cell>)> {
    let bins = crate::anyhub::Binaries::locate()?;
    crate::strongswan::charon_binary()?;
    let lab = Lab::create(&[], &[], None)?;
    let site = Charon::start(&lab.site_ns, &lab.site_dir())?;
    let s = |v: &str| vec![v.to_string()];
    let tunnel = crate::anyhub::Tunnel {
        id: "bench".into(),
        local_id: "fqdn:hub.example.net".into(),
        remote_id: "fqdn:site.example.net".into(),
        psk: "bench-dataplane-psk".into(),
        ike_proposals: s("aes256gcm16-prfsha256-x25519"),
        esp_proposals: s("aes256gcm16"),
        local_ts: s("10.20.0.0/24"),
        remote_ts: s("10.10.0.0/24"),
        remote_address: None,
        initiate: false,
        extra: vec![],
        pubkey: false,
    };
    let mut hub = crate::anyhub::Anyhubd::start(
        lab.hub_addr(),
        &lab.hub_ns,
        &lab.hub_dir(),
        &bins,
        &[tunnel],
        &crate::traffic::hub_dataplane_lines(),
    )?;
    site.load(&[SwanConn {
        name: "bench".into(),
        child: "bench".into(),
        local_addrs: SITE_ADDR.into(),
        remote_addrs: HUB_ADDR.into(),
        proposals: s("aes256gcm16-prfsha256-x25519"),
        esp_proposals: s("aes256gcm16"),
        local_id: "fqdn:site.example.net".into(),
        remote_id: "fqdn:hub.example.net".into(),
        psk: "bench-dataplane-psk".into(),
        local_ts: s("10.10.0.0/24"),
        remote_ts: s("10.20.0.0/24"),
        start: true,
        conn_extra: vec![],
        child_extra: vec![],
        pubkey: None,
    }])?;
    ping_until(
        &lab.site_ns,
        &["-I", "10.10.0.1", "10.20.0.1"],
        Duration::from_secs(15),
    )?;
    let r = both(&lab, &lab.dir, "10.20.0.1", "10.10.0.1", secs);
    // The traffic went through anyhubd's dataplane.
    let st = hub.status()?;
    let inbound: u64 = st.child_sas.iter().map(|c| c.in_packets).sum();
    if inbound < 1000 {
        bail!("anyhubd's SAs counted only {inbound} packets in");
    }
    drop((site, hub));
    Ok(r)
}

/// anyhubd ↔ anyhubd: the site anyhubd initiates (`force_encap`, so ESP
/// goes in UDP without a NAT) to the hub anyhubd; both run `[dataplane]`;
/// IKE-negotiated ESP-in-UDP AES-256-GCM through anyhub's ESP transform
/// on both ends.
fn bench_anyhubd(secs: u64) -> Result<(Result<Cell>, Result<Cell>)> {
    let bins = crate::anyhub::Binaries::locate()?;
    let lab = Lab::create(&[], &[], None)?;
    let mut hub = crate::anyhub::Anyhubd::start(
        lab.hub_addr(),
        &lab.hub_ns,
        &lab.hub_dir(),
        &bins,
        &[crate::pairs::hub_tunnel("aes256gcm16")],
        &crate::traffic::hub_dataplane_lines(),
    )?;
    let mut site = crate::pairs::start_site(&lab, &bins, "aes256gcm16")?;
    let up = ping_until(
        &lab.site_ns,
        &["-I", "10.10.0.1", "10.20.0.1"],
        Duration::from_secs(15),
    );
    if let Err(e) = up {
        bail!(
            "{e:#}: site log: {}",
            lab::tail(&site.log, 5).replace('\n', " | ")
        );
    }
    let r = both(&lab, &lab.dir, "10.20.0.1", "10.10.0.1", secs);
    let st = hub.status()?;
    let inbound: u64 = st.child_sas.iter().map(|c| c.in_packets).sum();
    if inbound < 1000 {
        bail!("the hub anyhubd's SAs counted only {inbound} packets in");
    }
    if site.exited().is_some() {
        bail!("the site anyhubd died: {}", lab::tail(&site.log, 5));
    }
    drop((site, hub));
    Ok(r)
}

fn bench_boringtun(secs: u64) -> Result<(Result<Cell>, Result<Cell>)> {
    let bt = find("BORINGTUN", "boringtun-cli").ok_or_else(|| {
        anyhow!("boringtun-cli not found (scripts/setup-bench.sh installs it: cargo install boringtun-cli)")
    })?;
    let wg = find("WG", "wg")
        .ok_or_else(|| anyhow!("wg not found (apt-get install wireguard-tools)"))?;
    let wg = wg.to_str().ok_or_else(|| anyhow!("path"))?.to_string();
    let bt = bt.to_str().ok_or_else(|| anyhow!("path"))?.to_string();
    let lab = Lab::create(&[], &[], None)?;
    let pid = std::process::id();
    let key = |_: ()| -> Result<(String, String)> {
        let out = lab::run(Command::new(&wg).arg("genkey"), Duration::from_secs(5))?;
        let private = out.text.trim().to_string();
        let mut c = Command::new("sh");
        c.args(["-c", &format!("echo '{private}' | '{wg}' pubkey")]);
        let public = lab::run(&mut c, Duration::from_secs(5))?
            .text
            .trim()
            .to_string();
        Ok((private, public))
    };
    let (ka, kb) = (key(())?, key(())?);
    let mut procs = Vec::new();
    let sides = [
        (
            &lab.site_ns,
            format!("wga{pid}"),
            &ka,
            &kb,
            HUB_ADDR,
            "10.30.0.1/24",
            lab.site_dir(),
        ),
        (
            &lab.hub_ns,
            format!("wgb{pid}"),
            &kb,
            &ka,
            SITE_ADDR,
            "10.30.0.2/24",
            lab.hub_dir(),
        ),
    ];
    for (ns, dev, me, them, peer, addr, dir) in &sides {
        let mut c = ns_cmd(ns, &bt);
        c.args(["--disable-drop-privileges", "--foreground", dev]);
        procs.push(Proc::spawn(
            &format!("boringtun in {ns}"),
            c,
            &dir.join("boringtun.log"),
        )?);
        let keyfile = dir.join("wg.key");
        fs::write(&keyfile, &me.0)?;
        let keyfile = keyfile.display().to_string();
        lab::eventually(Duration::from_secs(5), || {
            in_ns(
                ns,
                &wg,
                &[
                    "set",
                    dev,
                    "private-key",
                    &keyfile,
                    "listen-port",
                    "51820",
                    "peer",
                    &them.1,
                    "endpoint",
                    &format!("{peer}:51820"),
                    "allowed-ips",
                    "10.30.0.0/24",
                ],
            )
        })?;
        in_ns(ns, "ip", &["addr", "add", addr, "dev", dev])?;
        in_ns(ns, "ip", &["link", "set", dev, "up"])?;
    }
    ping_until(&lab.site_ns, &["10.30.0.2"], Duration::from_secs(5))?;
    let r = both(&lab, &lab.dir, "10.30.0.2", "10.30.0.1", secs);
    drop(procs);
    Ok(r)
}

fn run_peer(label: &'static str, f: impl FnOnce() -> Result<(Result<Cell>, Result<Cell>)>) -> Row {
    eprintln!("bench-dataplane: {label} …");
    match f() {
        Ok((one, four)) => Row { label, one, four },
        Err(e) => {
            let why = format!("{e:#}");
            Row {
                label,
                one: Err(anyhow!(why.clone())),
                four: Err(anyhow!(why)),
            }
        }
    }
}

fn json_num(c: &Result<Cell>) -> String {
    match c {
        Ok(c) => format!("{}", c.mbps),
        Err(_) => "null".into(),
    }
}

/// Runs every peer, prints the table and the JSON line. Fails only when
/// our own tunnel could not be measured.
pub fn run(opts: &Options) -> Result<()> {
    let secs = opts.seconds;
    let rows = vec![
        run_peer("veth", || bench_veth(secs)),
        run_peer("anyhub", || bench_anyhub(secs)),
        run_peer("strongswan", || bench_strongswan(secs)),
        run_peer("swan-anyhubd", || bench_swan_anyhubd(secs)),
        run_peer("anyhubd", || bench_anyhubd(secs)),
        run_peer("boringtun", || bench_boringtun(secs)),
    ];
    let describe = |label: &str| match label {
        "anyhub" => {
            "anyhub I/O layer alone: dp-forward, AES-256-GCM TEST transform (not ESP), UDP 4500"
        }
        "strongswan" => "strongSwan 5.9 kernel-libipsec, ESP-in-UDP AES-256-GCM (openssl/aesni)",
        "anyhubd" => "anyhubd <-> anyhubd [dataplane], IKE-negotiated ESP-in-UDP AES-256-GCM",
        "swan-anyhubd" => {
            "strongSwan site -> real anyhubd [dataplane], IKE-negotiated ESP-in-UDP AES-256-GCM"
        }
        "boringtun" => "boringtun-cli (WireGuard, ChaCha20-Poly1305)",
        _ => "bare veth",
    };
    println!();
    println!(
        "{:<13} {:>12} {:>6} {:>12} {:>6}  what",
        "peer", "1 stream", "retr", "4 streams", "retr"
    );
    for r in &rows {
        let cell = |c: &Result<Cell>| match c {
            Ok(c) => (format!("{:.1}", c.mbps), c.retr.to_string()),
            Err(_) => ("-".into(), "-".into()),
        };
        let (a, ar) = cell(&r.one);
        let (b, br) = cell(&r.four);
        println!(
            "{:<13} {:>12} {:>6} {:>12} {:>6}  {}",
            r.label,
            a,
            ar,
            b,
            br,
            describe(r.label)
        );
        if let Some(e) = [&r.one, &r.four].into_iter().find_map(|c| c.as_ref().err()) {
            println!("{:<13} error: {e:#}", "");
        }
    }
    println!(
        "(Mbit/s received, iperf3 TCP, {secs} s each; {} cores)",
        num_cpus()
    );
    let get = |l: &str| rows.iter().find(|r| r.label == l).expect("row");
    let real = get("anyhubd");
    let (any, ss, bt, veth, sa) = (
        get("anyhub"),
        get("strongswan"),
        get("boringtun"),
        get("veth"),
        get("swan-anyhubd"),
    );
    let best_peer = [&ss.one, &bt.one]
        .iter()
        .filter_map(|c| c.as_ref().ok().map(|c| c.mbps))
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    if let (Ok(a), Some(p)) = (&real.one, best_peer) {
        println!(
            "anyhubd <-> anyhubd single stream = {:.1}x the better of strongSwan and boringtun (goal: 10x)",
            a.mbps / p
        );
    }
    if let (Ok(a), Some(p)) = (&any.one, best_peer) {
        println!(
            "dp-forward (test transform) single stream = {:.1}x the better of strongSwan and boringtun",
            a.mbps / p
        );
    }
    println!("esp_overhead_vs_aead: null until the ESP micro-benchmark exists");
    println!(
        "{{\"bench\":\"dataplane\",\"anyhub_mbps\":{},\"strongswan_mbps\":{},\"boringtun_mbps\":{},\"veth_mbps\":{},\"anyhub_mbps_4\":{},\"boringtun_mbps_4\":{},\"esp_overhead_vs_aead\":null,\"swan_anyhubd_mbps\":{},\"swan_anyhubd_mbps_4\":{},\"anyhubd_mbps\":{},\"anyhubd_mbps_4\":{}}}",
        json_num(&any.one),
        json_num(&ss.one),
        json_num(&bt.one),
        json_num(&veth.one),
        json_num(&any.four),
        json_num(&bt.four),
        json_num(&sa.one),
        json_num(&sa.four),
        json_num(&real.one),
        json_num(&real.four),
    );
    if any.one.is_err() {
        bail!("the anyhub tunnel could not be measured");
    }
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
