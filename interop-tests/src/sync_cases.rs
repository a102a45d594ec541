//! SA replication between anyhubd nodes (`[sync]`, docs/sa-sync.md): two
//! anyhubd in the lab's hub namespace, node 1 on the hub address (the one
//! the strongSwan site talks to), node 2 on the namespace's loopback, their
//! QUIC bus on loopback with a fleet CA made for the run
//! (`anyhub_sa_sync::fleet`, what `sa-sync-node fleet init / add-node`
//! write). Run by `interop run` after the other cases (same `--filter`);
//! `interop selfcheck` has no anyhubd and skips them.

use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

use crate::anyhub::{config_toml, Anyhubd, Binaries, HubStatus};
use crate::cases::{hub_tunnel, site_conn, Outcome};
use crate::lab::{self, Lab};
use crate::strongswan::Charon;

pub struct SyncCase {
    pub name: String,
}

pub fn all() -> Vec<SyncCase> {
    vec![SyncCase {
        name: "sync-child-sa-replicated".into(),
    }]
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
    let lab = match Lab::create(&[], &[], keep.map(|k| k.join(&case.name))) {
        Ok(l) => l,
        Err(e) => {
            return Outcome {
                failure: Some(format!("building the lab: {e:#}")),
                logs: Vec::new(),
            }
        }
    };
    let r = panic::catch_unwind(AssertUnwindSafe(|| drive(bins, &lab)));
    let failure = match r {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(
            format!("{e:#}")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        ),
        Err(p) => Some(format!("panicked: {}", crate::panic_message(&p))),
    };
    let logs = if failure.is_some() {
        let tail = |p: &Path| lab::tail(p, 20);
        vec![
            (
                "node 1 anyhubd".into(),
                tail(&lab.hub_dir().join("anyhubd.log")),
            ),
            (
                "node 2 anyhubd".into(),
                tail(&lab.hub_dir().join("node2/anyhubd.log")),
            ),
        ]
    } else {
        Vec::new()
    };
    drop(lab);
    Outcome { failure, logs }
}
