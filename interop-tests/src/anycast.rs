//! The anycast lab (DESIGN.md, "The lab"): one strongSwan site, a transit
//! router, and N anyhubd nodes that all own the hub address.
//!
//! ```text
//!   site ahs<pid>-<n>              router ahr<pid>-<n>                 node k ahh<pid>-<m_k>
//!   lo 10.10.0.1                                                       lo 198.51.100.1 (anycast)
//!   vs 198.51.100.2/24 ── va 198.51.100.254/24 (proxy ARP)                10.20.0.1 (hub inner)
//!                           vk 10.98.k.254/24 ─────────────────────── vn 10.98.k.1/24
//!                           198.51.100.1/32 via 10.98.<steered>.1        default via 10.98.k.254
//! ```
//!
//! The site keeps its usual addresses (198.51.100.2 talking to
//! 198.51.100.1 on its /24): the router answers its ARP for the hub
//! address (proxy ARP) and forwards to whichever node [`AnycastLab::steer`]
//! last chose — what an ECMP group or a withdrawn BGP route does to a real
//! anycast address. Every node has the hub's inner address too, so a ping
//! from the site is answered by the node that decrypted it. The nodes'
//! sync bus runs over the router between the 10.98.k.1 addresses, so
//! steering never touches it; [`AnycastLab::partition`] cuts one node off
//! the bus (nftables in its namespace) and leaves its tunnel traffic alone.
//!
//! Every namespace is registered with the lab registry before it is made
//! (as [`crate::lab::Lab`]'s): a panic, a signal or a SIGKILLed harness
//! (swept on the next run: every name carries the harness's pid) leaves
//! nothing behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::lab::{
    self, add_inner, copy_logs, delete_namespace, ip, registry, DIR_PREFIX, HUB_ADDR, HUB_INNER,
    HUB_NS_PREFIX, INTERRUPTED, NEXT_LAB, ROUTER_NS_PREFIX, SITE_ADDR, SITE_INNER, SITE_NS_PREFIX,
};

/// The router's address on the site's /24.
const ROUTER_SITE_ADDR: &str = "198.51.100.254";

pub struct AnycastLab {
    n: u32,
    pub site_ns: String,
    pub router_ns: String,
    /// Node k (1-based) is `nodes[k - 1]`.
    pub nodes: Vec<String>,
    pub dir: PathBuf,
    keep: Option<PathBuf>,
}

impl AnycastLab {
    pub fn create(nodes: usize, keep: Option<PathBuf>) -> Result<AnycastLab> {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("harness is shutting down");
        }
        let pid = std::process::id();
        let n = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
        let lab = AnycastLab {
            n,
            site_ns: format!("{SITE_NS_PREFIX}{pid}-{n}"),
            router_ns: format!("{ROUTER_NS_PREFIX}{pid}-{n}"),
            // Lab numbers of their own, so `sweep_stale` recognises them.
            nodes: (0..nodes)
                .map(|_| {
                    let m = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
                    format!("{HUB_NS_PREFIX}{pid}-{m}")
                })
                .collect(),
            dir: std::env::temp_dir().join(format!("{DIR_PREFIX}{pid}-{n}")),
            keep,
        };
        let mut all = vec![lab.site_ns.clone(), lab.router_ns.clone()];
        all.extend(lab.nodes.iter().cloned());
        registry().labs.insert(n, (all, lab.dir.clone()));
        let _ = fs::remove_dir_all(&lab.dir);
        fs::create_dir_all(lab.site_dir()).context("creating the lab work dir")?;
        for k in 1..=nodes {
            fs::create_dir_all(lab.node_dir(k)).context("creating the lab work dir")?;
        }

        let (s, r) = (lab.site_ns.as_str(), lab.router_ns.as_str());
        ip(&["netns", "add", s])?;
        ip(&["netns", "add", r])?;
        let (vs, va) = (format!("vs{pid}-{n}"), format!("va{pid}-{n}"));
        veth(&vs, s, &va, r)?;
        addr_up(s, &vs, &format!("{SITE_ADDR}/24"))?;
        addr_up(r, &va, &format!("{ROUTER_SITE_ADDR}/24"))?;
        add_inner(s, SITE_INNER, &[])?;
        ip(&["-n", r, "link", "set", "lo", "up"])?;
        sysctl(r, "net.ipv4.ip_forward=1")?;
        // The router answers the site's ARP for the anycast address (it
        // has a route to it through another interface) and forwards
        // whatever source a node replies from.
        sysctl(r, &format!("net.ipv4.conf.{va}.proxy_arp=1"))?;
        sysctl(r, "net.ipv4.conf.all.rp_filter=0")?;
        sysctl(r, "net.ipv4.conf.default.rp_filter=0")?;
        for (i, ns) in lab.nodes.iter().enumerate() {
            let k = i + 1;
            ip(&["netns", "add", ns])?;
            let (vn, vk) = (format!("vn{pid}-{n}-{k}"), format!("vk{pid}-{n}-{k}"));
            veth(&vn, ns, &vk, r)?;
            addr_up(ns, &vn, &format!("{}/24", lab.node_addr(k)))?;
            addr_up(r, &vk, &format!("10.98.{k}.254/24"))?;
            sysctl(r, &format!("net.ipv4.conf.{vk}.rp_filter=0"))?;
            add_inner(ns, HUB_INNER, &[HUB_ADDR.parse().expect("an address")])?;
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &format!("10.98.{k}.254"),
            ])?;
        }
        lab.steer(1)?;
        Ok(lab)
    }

    /// Node k's own address (its sync bus listens there).
    pub fn node_addr(&self, k: usize) -> String {
        format!("10.98.{k}.1")
    }

    /// The router sends the anycast address's traffic to node `k`.
    pub fn steer(&self, k: usize) -> Result<()> {
        ip(&[
            "-n",
            &self.router_ns,
            "route",
            "replace",
            &format!("{HUB_ADDR}/32"),
            "via",
            &self.node_addr(k),
        ])
    }

    /// Cuts node `k` off the sync bus (every UDP datagram to or from
    /// `port` dropped in its namespace, both ways) while its tunnel
    /// traffic still flows: a partition of the replication network only.
    pub fn partition(&self, k: usize, port: u16) -> Result<()> {
        let rules = format!("udp dport {port} drop\n    udp sport {port} drop");
        lab::nft(
            &self.nodes[k - 1],
            &format!(
                "table inet harness_partition {{\n  chain input {{\n    type filter hook input priority -10; policy accept;\n    {rules}\n  }}\n  \
                 chain output {{\n    type filter hook output priority -10; policy accept;\n    {rules}\n  }}\n}}\n"
            ),
        )
    }

    /// Undoes [`AnycastLab::partition`].
    pub fn heal(&self, k: usize) -> Result<()> {
        lab::nft(&self.nodes[k - 1], "delete table inet harness_partition\n")
    }

    pub fn site_dir(&self) -> PathBuf {
        self.dir.join("site")
    }

    pub fn node_dir(&self, k: usize) -> PathBuf {
        self.dir.join(format!("node{k}"))
    }
}

impl Drop for AnycastLab {
    fn drop(&mut self) {
        delete_namespace(&self.site_ns);
        for ns in &self.nodes {
            delete_namespace(ns);
        }
        delete_namespace(&self.router_ns);
        if let Some(keep) = &self.keep {
            if let Err(e) = copy_logs(&self.dir, keep) {
                eprintln!("interop: keeping logs in {}: {e:#}", keep.display());
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
        registry().labs.remove(&self.n);
    }
}

/// A veth `a` in `ns_a` paired with `b` in `ns_b`, made inside them.
fn veth(a: &str, ns_a: &str, b: &str, ns_b: &str) -> Result<()> {
    ip(&[
        "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b,
    ])
}

fn addr_up(ns: &str, dev: &str, cidr: &str) -> Result<()> {
    ip(&["-n", ns, "addr", "add", cidr, "dev", dev])?;
    ip(&["-n", ns, "link", "set", dev, "up"])
}

fn sysctl(ns: &str, setting: &str) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "sysctl", "-qw", setting]);
    let out = lab::run(&mut cmd, Duration::from_secs(10))?;
    if !out.success() {
        bail!("sysctl {setting} in {ns}: {}", out.text.trim());
    }
    Ok(())
}

/// For log paths in reports.
pub fn log_of(dir: &Path) -> PathBuf {
    dir.join("anyhubd.log")
}
