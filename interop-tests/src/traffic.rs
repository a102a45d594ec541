//! Traffic through the tunnel, once both sides agree it is up: ping and
//! iperf3 both ways between the site's inner address (10.10.0.1, behind
//! strongSwan's kernel-libipsec TUN) and the hub's (10.20.0.1, behind
//! anyhubd's `[dataplane]` TUN), traffic selectors enforced, and a child
//! SA rekey in the middle of a transfer.
//!
//! Evidence is taken from both ends: the application (ping replies,
//! iperf3's received bytes) and anyhubd's per-SA counters (`in_packets`,
//! `out_packets`, drops by reason), so a case cannot pass by a path that
//! bypasses the tunnel (there is none: the namespaces only share the
//! veth, over which only ESP-in-UDP flows).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::anyhub::{Anyhubd, HubStatus};
use crate::lab::{self, Lab, Proc, HUB_INNER, SITE_INNER};
use crate::strongswan::Charon;

/// What traffic a case sends once the tunnel is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    /// Ping site → hub and hub → site.
    Ping,
    /// iperf3 TCP site → hub and hub → site, `secs` each.
    Iperf { secs: u64 },
    /// The hub sends from an address outside its traffic selectors: it
    /// must never reach the site (and a ping inside them still works).
    TsEnforced,
    /// iperf3 site → hub for `secs` while the hub and then the site rekey
    /// the child SA: the transfer must complete.
    RekeyDuringTransfer { secs: u64 },
    /// The hub's TUN is wider (MTU 1500) than the tunnel (inner MTU 1438
    /// for AES-GCM in UDP over 1500): a DF packet too big for the tunnel
    /// gets ICMP Fragmentation Needed with the tunnel's MTU, the sender's
    /// kernel learns it, and TCP SYNs through the tunnel are MSS-clamped.
    PathMtu,
    /// Beside the IPsec tunnel, a GRE tunnel (optionally keyed) from a
    /// scapy peer in the site namespace (`scapy/gre_peer.py`): keepalives
    /// reflected, ping through it, the MSS of a SYN-ACK into it clamped,
    /// and a DF packet from the hub too big for it answered with ICMP
    /// Fragmentation Needed (seen by the sending kernel).
    Gre { key: Option<u32> },
}

/// The scapy GRE peer's inner address and its prefix (routed into the GRE
/// tunnel by the hub).
pub const GRE_INNER: &str = "10.30.0.1";
const GRE_ROUTE: &str = "10.30.0.0/24";

/// anyhubd's `[[gre]]` table for [`Traffic::Gre`] (after [`hub_dataplane_lines`]).
pub fn hub_gre_lines(key: Option<u32>) -> Vec<String> {
    let mut v = vec![
        // Inside [dataplane]: a TUN MTU above the GRE tunnel's, so that the
        // dataplane, not the hub's kernel, meets the too-big packet.
        "mtu = 1500".into(),
        "[[gre]]".into(),
        "id = \"gre-site\"".into(),
        format!("remote = \"{}\"", lab::SITE_ADDR),
        format!("routes = [\"{GRE_ROUTE}\"]"),
    ];
    v.extend(key.map(|k| format!("key = {k}")));
    v
}

/// The extra `[dataplane]` line of [`Traffic::PathMtu`].
pub const WIDE_TUN: &str = "mtu = 1500";
/// The inner MTU of an AES-GCM-16 ESP-in-UDP tunnel over a 1500-byte path
/// (docs/architecture.md, "MTU and MSS from the real overhead").
const GCM_INNER_MTU: u32 = 1438;

/// The hub-side address outside every selector of the traffic cases.
pub const OUTSIDE_TS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 99, 0, 1);

/// `[ike]`-position lines that give anyhubd its dataplane (TOML: a new
/// table after `[ike]`'s keys; the `[[tunnel]]`s follow).
pub fn hub_dataplane_lines() -> Vec<String> {
    vec!["[dataplane]".into(), "tun = \"ahtun0\"".into()]
}

fn ns_cmd(ns: &str, prog: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, prog]);
    c
}

fn ping(ns: &str, src: &str, dst: &str, count: u32) -> Result<String> {
    let mut c = ns_cmd(ns, "ping");
    let n = count.to_string();
    c.args(["-n", "-c", &n, "-i", "0.2", "-W", "1", "-I", src, dst]);
    let out = lab::run(&mut c, Duration::from_secs(20))?;
    if !out.success() {
        bail!("ping {src} -> {dst} failed: {}", out.text.trim());
    }
    Ok(out.text)
}

/// Pings until one gets through (the first packets may race with the
/// site installing its routes), then `count` that must all be answered.
pub fn ping_both(ns: &str, src: &str, dst: &str, count: u32) -> Result<()> {
    lab::eventually(Duration::from_secs(6), || ping(ns, src, dst, 1).map(|_| ()))
        .with_context(|| format!("no ping {src} -> {dst} through the tunnel"))?;
    let text = ping(ns, src, dst, count)?;
    ensure!(
        text.contains(&format!("{count} packets transmitted, {count} received")),
        "ping {src} -> {dst} lost packets: {}",
        text.lines().rev().nth(1).unwrap_or("").trim()
    );
    Ok(())
}

/// The hub's one child SA (the newest if several).
fn hub_child(st: &HubStatus) -> Result<&crate::anyhub::HubChildSa> {
    st.child_sas
        .iter()
        .max_by_key(|c| (c.in_packets, c.spi_in))
        .ok_or_else(|| anyhow!("the hub lists no child SA"))
}

fn traffic_totals(st: &HubStatus) -> (u64, u64) {
    st.child_sas
        .iter()
        .fold((0, 0), |(i, o), c| (i + c.in_packets, o + c.out_packets))
}

/// iperf3 TCP for `secs` between the inner addresses; `reverse`: the hub
/// sends. Returns Mbit/s received; fails unless the transfer completed.
pub fn iperf(lab: &Lab, dir: &Path, reverse: bool, secs: u64, tag: &str) -> Result<f64> {
    let (hub, site) = (HUB_INNER.to_string(), SITE_INNER.to_string());
    let mut server = ns_cmd(&lab.hub_ns, "iperf3");
    server.args(["-s", "-1", "-B", &hub]);
    let _server = Proc::spawn(
        "iperf3 server",
        server,
        &dir.join(format!("iperf3-server-{tag}.log")),
    )?;
    let mut out = None;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(150));
        let mut client = ns_cmd(&lab.site_ns, "iperf3");
        client.args(["-c", &hub, "-B", &site, "-J", "-t", &secs.to_string()]);
        if reverse {
            client.arg("-R");
        }
        let o = lab::run(&mut client, Duration::from_secs(secs + 30))?;
        if o.success() {
            out = Some(o.text);
            break;
        }
        if !o.text.contains("Connection refused") {
            bail!("iperf3 failed: {}", one_line(&o.text));
        }
    }
    let text = out.ok_or_else(|| anyhow!("the iperf3 server never answered"))?;
    let start = text.find('{').ok_or_else(|| anyhow!("no iperf3 JSON"))?;
    let v: serde_json::Value = serde_json::Deserializer::from_str(&text[start..])
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no iperf3 JSON"))??;
    let recv = &v["end"]["sum_received"];
    let bytes = recv["bytes"].as_u64().unwrap_or(0);
    let bps = recv["bits_per_second"].as_f64().unwrap_or(0.0);
    ensure!(
        bytes > 0,
        "iperf3 {} received nothing",
        if reverse {
            "hub -> site"
        } else {
            "site -> hub"
        }
    );
    Ok((bps / 1e6 * 10.0).round() / 10.0)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Runs `t` against a tunnel that is up.
pub fn run(t: Traffic, lab: &Lab, site: &Charon, hub: &mut Anyhubd) -> Result<()> {
    let (hub_ip, site_ip) = (HUB_INNER.to_string(), SITE_INNER.to_string());
    match t {
        Traffic::Ping => {
            ping_both(&lab.site_ns, &site_ip, &hub_ip, 5).context("site -> hub")?;
            ping_both(&lab.hub_ns, &hub_ip, &site_ip, 5).context("hub -> site")?;
            let st = hub.status()?;
            let c = hub_child(&st)?;
            // 5 + 5 echo requests and replies at least each way.
            ensure!(
                c.in_packets >= 10 && c.out_packets >= 10,
                "the hub's child SA counted {} in / {} out, expected >= 10 each",
                c.in_packets,
                c.out_packets
            );
            eprintln!(
                "    ping both ways; hub SA {:08x}: {} in, {} out",
                c.spi_in, c.in_packets, c.out_packets
            );
        }
        Traffic::Iperf { secs } => {
            ping_both(&lab.site_ns, &site_ip, &hub_ip, 1)?;
            let up = iperf(lab, &lab.hub_dir(), false, secs, "up").context("site -> hub")?;
            let down = iperf(lab, &lab.hub_dir(), true, secs, "down").context("hub -> site")?;
            let st = hub.status()?;
            let (i, o) = traffic_totals(&st);
            ensure!(
                i > 1000 && o > 1000,
                "the hub's SAs counted {i} in / {o} out after two transfers"
            );
            eprintln!(
                "    iperf3 TCP site->hub {up} Mbit/s, hub->site {down} Mbit/s ({secs} s each; debug build, shared machine)"
            );
        }
        Traffic::Gre { key } => gre(lab, hub, key)?,
        Traffic::TsEnforced => {
            ping_both(&lab.site_ns, &site_ip, &hub_ip, 1)?;
            let before = hub.status()?;
            let (_, out_before) = traffic_totals(&before);
            let outside = OUTSIDE_TS.to_string();
            // Routed into the TUN (10.10.0.0/24 is the tunnel's), but from
            // a source outside the hub's selectors (10.20.0.0/24).
            let r = ping(&lab.hub_ns, &outside, &site_ip, 3);
            ensure!(
                r.is_err(),
                "a ping from {outside}, outside the selectors, was answered"
            );
            let after = hub.status()?;
            let (_, out_after) = traffic_totals(&after);
            ensure!(
                out_after == out_before,
                "the hub encrypted {} packets from outside its selectors",
                out_after - out_before
            );
            let dropped = after
                .counters
                .as_ref()
                .and_then(|c| c.get("dp_drop_selector_mismatch").copied())
                .unwrap_or(0);
            ensure!(
                dropped >= 3,
                "dp_drop_selector_mismatch = {dropped}, expected >= 3"
            );
            // Inside the selectors still works.
            ping_both(&lab.hub_ns, &hub_ip, &site_ip, 2)?;
            eprintln!("    {dropped} packets outside the selectors dropped, none encrypted");
        }
        Traffic::PathMtu => {
            ping_both(&lab.hub_ns, &hub_ip, &site_ip, 1)?;
            // First, before the hub's kernel learns the path MTU: its
            // SYN-ACK offers MSS 1460 (TUN MTU 1500), clamped to 1438 - 40.
            iperf(lab, &lab.hub_dir(), false, 1, "mss").context("TCP through the tunnel")?;
            let big = (GCM_INNER_MTU + 10 - 28).to_string();
            let mut c = ns_cmd(&lab.hub_ns, "ping");
            c.args([
                "-n", "-M", "do", "-s", &big, "-c", "2", "-i", "0.3", "-W", "1",
            ]);
            c.args(["-I", &hub_ip, &site_ip]);
            let out = lab::run(&mut c, Duration::from_secs(10))?;
            ensure!(
                !out.success(),
                "a {}-byte DF ping fit a tunnel of inner MTU {GCM_INNER_MTU}",
                GCM_INNER_MTU + 10
            );
            ensure!(
                out.text.contains(&format!("mtu = {GCM_INNER_MTU}"))
                    || out.text.contains(&format!("mtu={GCM_INNER_MTU}")),
                "the sender did not learn MTU {GCM_INNER_MTU}: {}",
                one_line(&out.text)
            );
            // Exactly the tunnel's MTU fits.
            let fits = (GCM_INNER_MTU - 28).to_string();
            let mut c = ns_cmd(&lab.hub_ns, "ping");
            c.args([
                "-n", "-M", "do", "-s", &fits, "-c", "2", "-i", "0.3", "-W", "1",
            ]);
            c.args(["-I", &hub_ip, &site_ip]);
            let out = lab::run(&mut c, Duration::from_secs(10))?;
            ensure!(
                out.success(),
                "a {GCM_INNER_MTU}-byte DF ping did not pass: {}",
                one_line(&out.text)
            );
            let st = hub.status()?;
            let c = st.counters.clone().unwrap_or_default();
            let icmp = c.get("dp_icmp_errors").copied().unwrap_or(0);
            let clamped = c.get("dp_mss_clamped").copied().unwrap_or(0);
            ensure!(icmp >= 1, "dp_icmp_errors = {icmp}");
            ensure!(clamped >= 1, "dp_mss_clamped = {clamped}");
            eprintln!(
                "    ICMP Fragmentation Needed (mtu {GCM_INNER_MTU}) seen by the sender; {icmp} ICMP errors, {clamped} SYNs clamped"
            );
        }
        Traffic::RekeyDuringTransfer { secs } => {
            ping_both(&lab.site_ns, &site_ip, &hub_ip, 1)?;
            let first = hub_child(&hub.status()?)?.spi_in;
            let dir = lab.hub_dir();
            let (lab_ref, dir_ref) = (lab, dir.as_path());
            let result = std::thread::scope(|s| {
                let transfer = s.spawn(move || iperf(lab_ref, dir_ref, false, secs, "rekey"));
                // The hub rekeys a third of the way in, the site at two
                // thirds: both directions switch SAs under load.
                std::thread::sleep(Duration::from_secs(secs / 3));
                let hub_rekey = hub.act(&["rekey", "site-a", "child"]);
                std::thread::sleep(Duration::from_secs(secs / 3));
                let site_rekey =
                    site.swanctl(&["--rekey", "--child", "site"], Duration::from_secs(10));
                let mbps = transfer
                    .join()
                    .map_err(|_| anyhow!("the iperf3 thread panicked"))?;
                hub_rekey.context("anyhubctl rekey")?;
                let o = site_rekey?;
                ensure!(o.success(), "swanctl --rekey failed: {}", one_line(&o.text));
                mbps
            });
            let mbps = result.context("the transfer across two rekeys")?;
            let st = hub.status()?;
            ensure!(
                st.child_sas.iter().all(|c| c.spi_in != first),
                "the child SA {first:08x} was not replaced"
            );
            eprintln!(
                "    iperf3 TCP {mbps} Mbit/s over {secs} s across a hub and a site child rekey"
            );
        }
    }
    Ok(())
}

/// [`Traffic::Gre`]: the scapy peer's checks, then the hub's counters.
fn gre(lab: &Lab, hub: &mut Anyhubd, key: Option<u32>) -> Result<()> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scapy/gre_peer.py");
    let mut c = ns_cmd(&lab.site_ns, "python3");
    let hub_inner = HUB_INNER.to_string();
    let iface = lab.site_if();
    c.args([
        script,
        "--local",
        lab::SITE_ADDR,
        "--hub",
        lab::HUB_ADDR,
        "--inner-local",
        GRE_INNER,
        "--inner-remote",
        &hub_inner,
        "--iface",
        &iface,
        "--count",
        "3",
        "--syn-port",
        "5201",
    ]);
    let k;
    if let Some(key) = key {
        k = key.to_string();
        c.args(["--key", &k]);
    }
    // A listener for the SYN (it answers SYN-ACK; the peer never ACKs).
    let mut listen = ns_cmd(&lab.hub_ns, "iperf3");
    listen.args(["-s", "-1", "-B", &hub_inner, "-p", "5201"]);
    let _server = Proc::spawn(
        "iperf3 -s (GRE)",
        listen,
        &lab.hub_dir().join("gre-iperf3.log"),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let out = lab::run(&mut c, Duration::from_secs(40))?;
    let line = out
        .text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    ensure!(
        out.success(),
        "the scapy GRE peer saw: {} ({})",
        line,
        out.text.trim().lines().last().unwrap_or("")
    );
    let st = hub.status()?;
    let (id, rx, tx, ka) = st
        .gre
        .first()
        .cloned()
        .ok_or_else(|| anyhow!("the hub shows no GRE tunnel"))?;
    // The tunnel's inner MTU on a 1500 path: IPv4 20 + GRE 4 (+ key 4).
    let mtu = 1500 - 24 - if key.is_some() { 4 } else { 0 };
    let v: serde_json::Value = serde_json::from_str(line).context("the peer's JSON line")?;
    let mss = v.get("synack_mss").and_then(serde_json::Value::as_u64);
    ensure!(
        mss == Some(mtu as u64 - 40),
        "the SYN-ACK through GRE carried MSS {mss:?}, expected {} (clamped to the tunnel)",
        mtu - 40
    );
    // 3 echo requests + the SYN in, 3 replies + the SYN-ACK out.
    ensure!(
        rx >= 4 && tx >= 4 && ka >= 3,
        "the hub's GRE tunnel {id} counted {rx} in, {tx} out, {ka} keepalives"
    );
    // A DF ping from the hub one octet over the tunnel's MTU: the dataplane
    // answers ICMP Fragmentation Needed with the MTU, which ping shows.
    let size = (mtu + 1 - 28).to_string();
    let mut p = ns_cmd(&lab.hub_ns, "ping");
    p.args([
        "-n", "-M", "do", "-c", "2", "-i", "0.3", "-W", "1", "-s", &size, "-I", &hub_inner,
        GRE_INNER,
    ]);
    let ping_out = lab::run(&mut p, Duration::from_secs(10))?;
    let want = [format!("mtu = {mtu}"), format!("mtu={mtu}")];
    ensure!(
        want.iter().any(|w| ping_out.text.contains(w.as_str())),
        "a {size}-octet DF ping into the GRE tunnel did not learn mtu {mtu}: {}",
        ping_out.text.trim().replace('\n', " | ")
    );
    eprintln!(
        "    scapy GRE peer: {line}; hub {id}: {rx} in, {tx} out, {ka} keepalives; DF ping learnt mtu {mtu}"
    );
    Ok(())
}
