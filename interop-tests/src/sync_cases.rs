//! SA replication between anyhubd nodes (`[sync]`, docs/sa-sync.md): two
//! anyhubd in the lab's hub namespace, node 1 on the hub address (the one
//! the strongSwan site talks to), node 2 on the namespace's loopback, their
//! QUIC bus on loopback with a fleet CA made for the run
//! (`anyhub_sa_sync::fleet`, what `sa-sync-node fleet init / add-node`
//! write). Run by `interop run` after the other cases (same `--filter`);
//! `interop selfcheck` has no anyhubd and skips them.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

use crate::anycast::{self, AnycastLab};
use crate::anyhub::{config_toml, Anyhubd, Binaries, HubChildSa, HubStatus};
use crate::cases::{hub_tunnel, site_conn, Outcome};
use crate::lab::{self, Lab};
use crate::strongswan::Charon;
use crate::traffic;

pub struct SyncCase {
    pub name: String,
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Kind {
    /// Two nodes in one namespace, no dataplane: records only.
    Replicated,
    /// The anycast lab (anycast.rs): three nodes with dataplanes, the
    /// site's traffic steered from node to node, then node 1 killed.
    AnycastSteer,
}

pub fn all() -> Vec<SyncCase> {
    vec![
        SyncCase {
            name: "sync-child-sa-replicated".into(),
            kind: Kind::Replicated,
        },
        SyncCase {
            name: "sync-anycast-steer-and-node-loss".into(),
            kind: Kind::AnycastSteer,
        },
    ]
}

/// The bus ports (the namespace is the run's own).
const SYNC_PORT: [u16; 2] = [7101, 7102];
const NAMES: [&str; 2] = ["interop-hub", "interop-hub2"];

/// Node `n`'s (1 or 2) config: the harness's hub config with its index,
/// name and a `[sync]` section naming the other node.
fn node_config(n: usize, listen: &str, dir: &Path, fleet: &Path) -> String {
    let base = config_toml(
        listen,
        &[hub_tunnel("site-a")],
        &dir.join("anyhubd.sock"),
        &[],
    );
    let base = base.replacen(
        "[node]\nindex = 1\nname = \"interop-hub\"\n",
        &format!("[node]\nindex = {n}\nname = \"{}\"\n", NAMES[n - 1]),
        1,
    );
    let other = 3 - n;
    format!(
        "{base}\n[sync]\nlisten = \"127.0.0.1:{}\"\nfleet_dir = {}\nbootstrap = {}\n\
         peers = [{{ index = {other}, address = \"127.0.0.1:{}\" }}]\n",
        SYNC_PORT[n - 1],
        serde_json::to_string(&fleet.display().to_string()).expect("a string"),
        n == 1,
        SYNC_PORT[other - 1],
    )
}

fn sync_of(st: &HubStatus) -> Result<&Value> {
    st.sync
        .as_ref()
        .ok_or_else(|| anyhow!("status has no `sync` object"))
}

fn drive(bins: &Binaries, lab: &Lab) -> Result<()> {
    let fleet = lab.hub_dir().join("fleet");
    anyhub_sa_sync::fleet::init(&fleet).context("fleet init")?;
    for (i, name) in NAMES.iter().enumerate() {
        anyhub_sa_sync::fleet::add_node(&fleet, i as u16 + 1, name).context("fleet add-node")?;
    }
    let site = Charon::start_with(&lab.site_ns, &lab.site_dir(), &[])
        .context("starting the site's charon")?;
    site.load(&[site_conn("site")]).context("site")?;

    let level = std::env::var("ANYHUBD_LOG_LEVEL").unwrap_or_else(|_| "debug".into());
    let dir1 = lab.hub_dir();
    let dir2 = lab.hub_dir().join("node2");
    std::fs::create_dir_all(&dir2)?;
    let mut hub1 = Anyhubd::start_text(
        &lab.hub_ns,
        &dir1,
        bins,
        &node_config(1, lab.hub_addr(), &dir1, &fleet),
        &level,
        None,
    )
    .context("node 1")?;
    let mut hub2 = Anyhubd::start_text(
        &lab.hub_ns,
        &dir2,
        bins,
        &node_config(2, "127.0.0.1", &dir2, &fleet),
        &level,
        None,
    )
    .context("node 2")?;

    // Both ends of the bus up before the site connects.
    for (n, hub) in [(1, &mut hub1), (2, &mut hub2)] {
        lab::eventually(Duration::from_secs(15), || {
            let st = hub.status()?;
            let s = sync_of(&st)?;
            ensure!(
                s["peers_connected"].as_u64() == Some(1) && s["caught_up"] == Value::Bool(true),
                "node {n}'s sync is not connected and caught up: {s}"
            );
            Ok(())
        })?;
    }

    let out = site.initiate("site", "site")?;
    if !out.success() {
        bail!(
            "swanctl --initiate failed: {}",
            out.text.trim().replace('\n', " | ")
        );
    }
    let child = lab::eventually(Duration::from_secs(10), || {
        let st = hub1.status()?;
        st.child_sas
            .first()
            .cloned()
            .ok_or_else(|| anyhow!("node 1 lists no child SA"))
    })?;
    // Node 2 never spoke IKE with the site: the SA reaches it only by sync.
    let st2 = lab::eventually(Duration::from_secs(5), || {
        let st = hub2.status()?;
        ensure!(
            st.child_sas
                .iter()
                .any(|c| c.spi_in == child.spi_in && c.spi_out == child.spi_out),
            "node 2 does not hold child SA {:08x}/{:08x} within 5 s: it lists {:?}",
            child.spi_in,
            child.spi_out,
            st.child_sas
                .iter()
                .map(|c| format!("{:08x}/{:08x}", c.spi_in, c.spi_out))
                .collect::<Vec<_>>()
        );
        Ok(st)
    })?;
    let c2 = st2
        .child_sas
        .iter()
        .find(|c| c.spi_in == child.spi_in)
        .expect("checked above");
    ensure!(
        c2.tunnel == child.tunnel
            && c2.proposal == child.proposal
            && c2.local_ts == child.local_ts
            && c2.remote_ts == child.remote_ts,
        "node 2's copy differs: {c2:?} vs node 1's {child:?}"
    );
    ensure!(
        st2.ike_sas.is_empty(),
        "node 2 has IKE SAs of its own: {:?}",
        st2.ike_sas
    );
    let applied = sync_of(&st2)?["counters"]["sad_applied"].as_u64();
    ensure!(
        applied.is_some_and(|n| n >= 1),
        "node 2's sync counters show no SA applied: {}",
        sync_of(&st2)?
    );

    // The site deletes its IKE SA: node 1 tombstones its child SAs, node 2
    // drops its copy.
    let out = site.swanctl(&["--terminate", "--ike", "site"], Duration::from_secs(10))?;
    ensure!(
        out.success(),
        "swanctl --terminate failed: {}",
        out.text.trim().replace('\n', " | ")
    );
    lab::eventually(Duration::from_secs(5), || {
        let st = hub2.status()?;
        ensure!(
            st.child_sas.is_empty(),
            "node 2 still holds {} child SA(s) after the site deleted its IKE SA",
            st.child_sas.len()
        );
        Ok(())
    })?;
    eprintln!(
        "    child SA {:08x}/{:08x} established on node 1 replicated to node 2, and its delete",
        child.spi_in, child.spi_out
    );
    Ok(())
}

/// Runs one case in a lab of its own.
pub fn run(case: &SyncCase, bins: &Binaries, keep: Option<&Path>) -> Outcome {
    if let Kind::AnycastSteer = case.kind {
        return run_anycast(case, bins, keep, false);
    }
    let lab = match Lab::create(&[], &[], keep.map(|k| k.join(&case.name))) {
        Ok(l) => l,
        Err(e) => {
            return Outcome {
                failure: Some(format!("building the lab: {e:#}")),
                logs: Vec::new(),
            }
        }
    };
    let failure = crate::failure_of(|| drive(bins, &lab));
    let logs = crate::log_tails(
        &failure,
        &[
            ("node 1 anyhubd".into(), lab.hub_dir().join("anyhubd.log")),
            (
                "node 2 anyhubd".into(),
                lab.hub_dir().join("node2/anyhubd.log"),
            ),
        ],
    );
    drop(lab);
    Outcome { failure, logs }
}

/// Nodes in the anycast case.
const ANYCAST_NODES: usize = 3;
const ANYCAST_BUS_PORT: u16 = 7100;

/// Node `k`'s config in the anycast lab: the harness's hub tunnel on the
/// anycast address, a dataplane, and `[sync]` with every other node and
/// the default barrier ("all").
fn anycast_config(lab: &AnycastLab, k: usize, fleet: &Path, bootstrap: bool) -> String {
    let dir = lab.node_dir(k);
    let base = config_toml(
        crate::lab::HUB_ADDR,
        &[hub_tunnel("site-a")],
        &dir.join("anyhubd.sock"),
        &traffic::hub_dataplane_lines(),
    );
    let base = base.replacen(
        "[node]\nindex = 1\nname = \"interop-hub\"\n",
        &format!("[node]\nindex = {k}\nname = \"node{k}\"\n"),
        1,
    );
    let peers: Vec<String> = (1..=ANYCAST_NODES)
        .filter(|&p| p != k)
        .map(|p| {
            format!(
                "{{ index = {p}, address = \"{}:{ANYCAST_BUS_PORT}\" }}",
                lab.node_addr(p)
            )
        })
        .collect();
    format!(
        "{base}\n[sync]\nlisten = \"{}:{ANYCAST_BUS_PORT}\"\nfleet_dir = {}\nbootstrap = {}\n\
         peers = [{}]\n",
        lab.node_addr(k),
        serde_json::to_string(&fleet.display().to_string()).expect("a string"),
        bootstrap,
        peers.join(", "),
    )
}

/// The child SA `spi_in` in a node's status.
fn child_on(st: &HubStatus, spi_in: u32) -> Option<&HubChildSa> {
    st.child_sas.iter().find(|c| c.spi_in == spi_in)
}

/// Pings the hub's inner address from the site's: `count` pings that must
/// all be answered (strict: no warm-up, the tunnel is up and the node
/// holds the SA already).
fn ping_strict(lab: &AnycastLab, count: u32) -> Result<()> {
    let mut c = std::process::Command::new("ip");
    let n = count.to_string();
    let (src, dst) = (
        crate::lab::SITE_INNER.to_string(),
        crate::lab::HUB_INNER.to_string(),
    );
    c.args([
        "netns",
        "exec",
        &lab.site_ns,
        "ping",
        "-n",
        "-c",
        &n,
        "-i",
        "0.2",
        "-W",
        "1",
        "-I",
    ])
    .args([&src, &dst]);
    let out = lab::run(&mut c, Duration::from_secs(20))?;
    ensure!(
        out.text
            .contains(&format!("{count} packets transmitted, {count} received")),
        "ping {src} -> {dst}: {}",
        out.text
            .lines()
            .rev()
            .nth(1)
            .unwrap_or(out.text.trim())
            .trim()
    );
    Ok(())
}

fn drive_anycast(bins: &Binaries, lab: &AnycastLab, show: bool) -> Result<()> {
    let fleet = lab.dir.join("fleet");
    anyhub_sa_sync::fleet::init(&fleet).context("fleet init")?;
    for k in 1..=ANYCAST_NODES {
        anyhub_sa_sync::fleet::add_node(&fleet, k as u16, &format!("node{k}"))
            .context("fleet add-node")?;
    }
    let level = std::env::var("ANYHUBD_LOG_LEVEL").unwrap_or_else(|_| "debug".into());
    let mut nodes = Vec::new();
    for k in 1..=ANYCAST_NODES {
        nodes.push(
            Anyhubd::start_text(
                &lab.nodes[k - 1],
                &lab.node_dir(k),
                bins,
                &anycast_config(lab, k, &fleet, k == 1),
                &level,
                None,
            )
            .with_context(|| format!("node {k}"))?,
        );
    }
    for (i, hub) in nodes.iter_mut().enumerate() {
        lab::eventually(Duration::from_secs(15), || {
            let st = hub.status()?;
            let s = sync_of(&st)?;
            ensure!(
                s["peers_connected"].as_u64() == Some(ANYCAST_NODES as u64 - 1)
                    && s["caught_up"] == Value::Bool(true),
                "node {}'s sync is not connected to every node and caught up: {s}",
                i + 1
            );
            Ok(())
        })?;
    }

    // The site reaches node 1 and establishes its tunnel there.
    let site = Charon::start_with(&lab.site_ns, &lab.site_dir(), &[])
        .context("starting the site's charon")?;
    site.load(&[site_conn("site")]).context("site")?;
    let out = site.initiate("site", "site")?;
    ensure!(
        out.success(),
        "swanctl --initiate failed: {}",
        out.text.trim().replace('\n', " | ")
    );
    // swanctl returned: the site holds IKE_AUTH's response, which node 1
    // sent only after nodes 2 and 3 installed the child SA (the barrier).
    // So they must hold it now, without waiting.
    let st1 = nodes[0].status()?;
    let child = st1
        .child_sas
        .first()
        .cloned()
        .ok_or_else(|| anyhow!("node 1 lists no child SA after the site's initiate"))?;
    for (i, hub) in nodes.iter_mut().enumerate().skip(1) {
        let st = hub.status()?;
        let c = child_on(&st, child.spi_in).ok_or_else(|| {
            anyhow!(
                "node {} does not hold child SA {:08x} when the site already uses it \
                 (the barrier did not hold node 1's response)",
                i + 1,
                child.spi_in
            )
        })?;
        ensure!(
            c.spi_out == child.spi_out
                && c.local_ts == child.local_ts
                && c.remote_ts == child.remote_ts,
            "node {}'s copy differs: {c:?} vs node 1's {child:?}",
            i + 1
        );
        ensure!(
            st.ike_sas.is_empty(),
            "node {} has IKE SAs of its own",
            i + 1
        );
    }
    let s1 = sync_of(&st1)?;
    ensure!(
        s1["counters"]["barrier_reached"].as_u64() == Some(1),
        "node 1 counts no reached barrier: {s1}"
    );
    if show {
        println!("\n=== the site's tunnel, established with node 1 ===");
        let out = site.swanctl(&["--list-sas"], Duration::from_secs(10))?;
        println!("{}", out.text.trim_end());
        for (i, hub) in nodes.iter_mut().enumerate() {
            println!("\n=== node {} (anyhubctl status) ===", i + 1);
            println!("{}", hub.status_text()?.trim_end());
        }
    }

    // Traffic to node 1, then steered to 2 and 3: each node decrypts the
    // site's pings with the replicated SA and answers them. Replies from a
    // node that takes over an SA use sequence numbers above its previous
    // senders' (anti-replay stays on at the site).
    const PINGS: u32 = 5;
    traffic::ping_both(
        &lab.site_ns,
        &crate::lab::SITE_INNER.to_string(),
        &crate::lab::HUB_INNER.to_string(),
        PINGS,
    )
    .context("through node 1")?;
    for k in [2, 3, 1, 2] {
        let before = child_on(&nodes[k - 1].status()?, child.spi_in)
            .map(|c| (c.in_packets, c.out_packets))
            .unwrap_or_default();
        lab.steer(k)?;
        ping_strict(lab, PINGS).with_context(|| format!("steered to node {k}"))?;
        let st = nodes[k - 1].status()?;
        let c = child_on(&st, child.spi_in).ok_or_else(|| anyhow!("node {k} lost the child SA"))?;
        ensure!(
            c.in_packets >= before.0 + u64::from(PINGS)
                && c.out_packets >= before.1 + u64::from(PINGS),
            "node {k} did not carry the pings steered to it: in {} -> {}, out {} -> {}",
            before.0,
            c.in_packets,
            before.1,
            c.out_packets
        );
    }

    // Node 1, which negotiated the tunnel, dies: the site's traffic, now on
    // node 2, goes on, and node 3 still holds the SA.
    nodes[0].kill_hard();
    ping_strict(lab, PINGS).context("on node 2 after node 1 was killed")?;
    lab.steer(3)?;
    ping_strict(lab, PINGS).context("steered to node 3 after node 1 was killed")?;
    // The IKE SA lives on: the site rekeys its child SA while steered to
    // node 3, which adopts node 1's replicated IKE SA state to answer;
    // then, steered to node 2, it rekeys the IKE SA, which node 2 adopts
    // from node 3's record (and node 3 releases).
    let ctl = |args: &[&str]| -> Result<()> {
        let out = site.swanctl(args, Duration::from_secs(15))?;
        ensure!(
            out.success(),
            "swanctl {}: {}",
            args.join(" "),
            out.text.trim().replace('\n', " | ")
        );
        Ok(())
    };
    ctl(&["--rekey", "--child", "site"])?;
    let new_child = lab::eventually(Duration::from_secs(10), || {
        let st = nodes[2].status()?;
        ensure!(
            st.ike_sas.len() == 1,
            "node 3 holds no IKE SA: {:?}",
            st.ike_sas
        );
        st.child_sas
            .iter()
            .find(|c| c.spi_in != child.spi_in && c.remote_ts == child.remote_ts)
            .cloned()
            .ok_or_else(|| anyhow!("node 3 has no rekeyed child SA"))
    })
    .context("the site's child SA rekey, answered by node 3 after node 1 died")?;
    let s3 = nodes[2].status()?;
    ensure!(
        sync_of(&s3)?["counters"]["ike_adopted"].as_u64() == Some(1),
        "node 3 did not count its adoption: {}",
        sync_of(&s3)?
    );
    ping_strict(lab, PINGS).context("on node 3 after the child SA rekey")?;
    lab.steer(2)?;
    lab::eventually(Duration::from_secs(5), || {
        let st = nodes[1].status()?;
        child_on(&st, new_child.spi_in)
            .map(|_| ())
            .ok_or_else(|| anyhow!("node 2 lacks the rekeyed child SA {:08x}", new_child.spi_in))
    })?;
    ping_strict(lab, PINGS).context("on node 2 with the rekeyed child SA")?;
    let old_ike = s3.ike_sas[0].clone();
    ctl(&["--rekey", "--ike", "site"])?;
    lab::eventually(Duration::from_secs(10), || {
        let (st2, st3) = (nodes[1].status()?, nodes[2].status()?);
        ensure!(
            st2.ike_sas.len() == 1 && st2.ike_sas[0].spi_i != old_ike.spi_i,
            "node 2 does not hold the rekeyed IKE SA: {:?}",
            st2.ike_sas
        );
        ensure!(
            st3.ike_sas.is_empty(),
            "node 3 still holds an IKE SA: {:?}",
            st3.ike_sas
        );
        Ok(())
    })
    .context("the site's IKE SA rekey, steered to node 2")?;
    ping_strict(lab, PINGS).context("on node 2 after the IKE SA rekey")?;

    // Node 1 comes back (an empty process, not the fleet's first node any
    // more): it catches up from the others — the rekeyed child SA and the
    // other nodes' sequence reservations — and carries the site's traffic
    // again when steered back to it.
    nodes[0] = Anyhubd::start_text(
        &lab.nodes[0],
        &lab.node_dir(1),
        bins,
        &anycast_config(lab, 1, &fleet, false),
        &level,
        None,
    )
    .context("restarting node 1")?;
    lab::eventually(Duration::from_secs(15), || {
        let st = nodes[0].status()?;
        let s = sync_of(&st)?;
        ensure!(
            s["caught_up"] == Value::Bool(true)
                && s["peers_connected"].as_u64() == Some(ANYCAST_NODES as u64 - 1),
            "restarted node 1 has not caught up: {s}"
        );
        child_on(&st, new_child.spi_in)
            .map(|_| ())
            .ok_or_else(|| anyhow!("restarted node 1 lacks child SA {:08x}", new_child.spi_in))
    })
    .context("node 1's catch-up after its restart")?;
    lab.steer(1)?;
    ping_strict(lab, PINGS).context("on the restarted node 1")?;

    // A partition of the bus: node 3 is cut off (its tunnel path is not).
    // The site rekeys its child SA through node 1, which takes the IKE SA
    // over from node 2 and cannot reach node 3; once the partition heals,
    // node 3 converges — it holds the new child SA — and carries the
    // traffic steered to it.
    lab.partition(3, ANYCAST_BUS_PORT)?;
    lab::eventually(Duration::from_secs(10), || {
        let st = nodes[0].status()?;
        let s = sync_of(&st)?;
        ensure!(
            s["peers_connected"].as_u64() == Some(ANYCAST_NODES as u64 - 2),
            "node 1 still counts node 3 as connected: {s}"
        );
        Ok(())
    })
    .context("partitioning node 3 off the bus")?;
    ctl(&["--rekey", "--child", "site"])?;
    let third_child = lab::eventually(Duration::from_secs(10), || {
        let st = nodes[0].status()?;
        ensure!(
            st.ike_sas.len() == 1,
            "node 1 holds no IKE SA: {:?}",
            st.ike_sas
        );
        st.child_sas
            .iter()
            .find(|c| c.spi_in != new_child.spi_in && c.spi_in != child.spi_in)
            .cloned()
            .ok_or_else(|| anyhow!("node 1 has no rekeyed child SA"))
    })
    .context("a child SA rekey through the restarted node 1 during the partition")?;
    ping_strict(lab, PINGS).context("on node 1 during the partition")?;
    ensure!(
        child_on(&nodes[2].status()?, third_child.spi_in).is_none(),
        "node 3 got child SA {:08x} across the partition",
        third_child.spi_in
    );
    lab.heal(3)?;
    lab::eventually(Duration::from_secs(15), || {
        let st = nodes[2].status()?;
        child_on(&st, third_child.spi_in)
            .map(|_| ())
            .ok_or_else(|| {
                anyhow!(
                    "node 3 lacks child SA {:08x} after the heal",
                    third_child.spi_in
                )
            })
    })
    .context("node 3's convergence after the partition healed")?;
    lab.steer(3)?;
    ping_strict(lab, PINGS).context("on node 3 after the partition healed")?;
    if show {
        for (i, hub) in nodes.iter_mut().enumerate().skip(1) {
            println!(
                "\n=== node {} after the site's pings were steered 1 → 2 → 3 → 1 → 2, node 1 was killed, \
                 then → 3 (child SA rekey) → 2 (IKE SA rekey) ===",
                i + 1
            );
            println!("{}", hub.status_text()?.trim_end());
        }
    }
    eprintln!(
        "    child SA {:08x}/{:08x}: negotiated on node 1, held by nodes 2 and 3 before the site could use it; \
         pings answered by nodes 1, 2, 3, 1, 2, and by 2 and 3 after node 1 was killed; \
         the child SA rekey answered by node 3 and the IKE SA rekey by node 2 (adopted IKE SA); \
         node 1 restarted, caught up and answered again; node 3 partitioned off the bus during a rekey, \
         converged after the heal and answered",
        child.spi_in, child.spi_out
    );
    Ok(())
}

/// `make demo`'s fleet part: the anycast case, printing the site's SAs and
/// every node's `anyhubctl status` along the way.
pub fn demo(bins: &Binaries) -> Outcome {
    let case = all()
        .into_iter()
        .find(|c| matches!(c.kind, Kind::AnycastSteer))
        .expect("the anycast case exists");
    run_anycast(&case, bins, None, true)
}

fn run_anycast(case: &SyncCase, bins: &Binaries, keep: Option<&Path>, show: bool) -> Outcome {
    let lab = match AnycastLab::create(ANYCAST_NODES, keep.map(|k| k.join(&case.name))) {
        Ok(l) => l,
        Err(e) => {
            return Outcome {
                failure: Some(format!("building the anycast lab: {e:#}")),
                logs: Vec::new(),
            }
        }
    };
    let failure = crate::failure_of(|| drive_anycast(bins, &lab, show));
    let mut logs: Vec<(String, std::path::PathBuf)> = (1..=ANYCAST_NODES)
        .map(|k| {
            (
                format!("node {k} anyhubd"),
                anycast::log_of(&lab.node_dir(k)),
            )
        })
        .collect();
    logs.push(("site charon".into(), lab.site_dir().join("charon.log")));
    let logs = crate::log_tails(&failure, &logs);
    drop(lab);
    Outcome { failure, logs }
}
