//! Network namespaces, the veth between them, process guards and command
//! helpers.
//!
//! A [`Lab`] is two namespaces joined by a veth:
//!
//! ```text
//!   ahs<pid>-<n> (site, strongSwan)            ahh<pid>-<n> (hub, anyhubd)
//!   lo: 10.10.0.1/32                           lo: 10.20.0.1/32
//!   vs<pid>-<n>: 198.51.100.2/24 <--veth--> vh<pid>-<n>: 198.51.100.1/24
//! ```
//!
//! A NAT lab ([`Lab::create_nat`]) puts a router namespace between them and
//! one side behind it, on a private address; the router forwards and
//! masquerades that side's traffic to the side's usual public address
//! (nftables, conntrack), so the other side sees it exactly there:
//!
//! ```text
//!   site behind the NAT (Behind::Site):
//!   site: vs 10.99.0.2/24 ── vri 10.99.0.1/24  ahr<pid>-<n>  vro 198.51.100.2/24 ── vh 198.51.100.1/24 :hub
//!         default via .1                   masquerade to :20000-20999
//! ```
//!
//! With `Behind::Hub` the roles swap: the hub gets 10.99.0.2 and the router
//! takes 198.51.100.1 towards the site.
//!
//! Everything a lab creates is recorded in a global registry before it is
//! created, so it can be removed by `Drop` (normal end, error, panic), by the
//! signal thread (Ctrl-C / SIGTERM of the harness), or, if the harness was
//! SIGKILLed, by [`sweep_stale`] at the start of the next run: every name
//! carries the pid of the harness that made it.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::sys;

pub const SITE_ADDR: &str = "198.51.100.2";
pub const HUB_ADDR: &str = "198.51.100.1";
pub const SITE_INNER: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
pub const HUB_INNER: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 1);

pub(crate) const SITE_NS_PREFIX: &str = "ahs";
pub(crate) const HUB_NS_PREFIX: &str = "ahh";
pub(crate) const ROUTER_NS_PREFIX: &str = "ahr";

/// The private address of the side behind a NAT lab's router.
pub const NAT_INSIDE: &str = "10.99.0.2";
const NAT_INSIDE_NET: &str = "10.99.0.0/24";
/// The router's inside address: the NATed side's default gateway.
pub const NAT_GATEWAY: &str = "10.99.0.1";
/// The source ports the router maps the inside's UDP flows to.
pub const NAT_PORTS: (u16, u16) = (20_000, 20_999);
/// After [`Lab::nat_remap`]: a second public address of the router's and
/// another port range.
pub const NAT_REMAP_ADDR: &str = "198.51.100.3";
pub const NAT_REMAP_PORTS: (u16, u16) = (30_000, 30_999);

/// Which side of a NAT lab sits behind the router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behind {
    Site,
    Hub,
}
pub(crate) const DIR_PREFIX: &str = "anyhub-interop-";

pub(crate) static NEXT_LAB: AtomicU32 = AtomicU32::new(1);
pub(crate) static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    labs: BTreeMap::new(),
    procs: BTreeMap::new(),
});

/// What must be torn down if the harness is interrupted.
pub(crate) struct Registry {
    /// lab number → (namespaces, work dir)
    pub(crate) labs: BTreeMap<u32, (Vec<String>, PathBuf)>,
    /// pid → name, for every daemon a [`Proc`] guard owns
    procs: BTreeMap<i32, String>,
}

pub(crate) fn registry() -> MutexGuard<'static, Registry> {
    // A panic while holding the lock must not stop later cleanup.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the thread that turns SIGINT/SIGTERM/SIGHUP into a cleanup of
/// every live lab followed by `exit(128 + sig)`. Call first thing in main.
pub fn install_signal_cleanup() -> Result<()> {
    sys::block_termination_signals().context("blocking termination signals")?;
    thread::Builder::new()
        .name("signal-cleanup".into())
        .spawn(|| {
            let sig = sys::wait_termination_signal();
            INTERRUPTED.store(true, Ordering::SeqCst);
            let n = cleanup_everything();
            eprintln!("interop: interrupted by signal {sig}; cleaned up {n} lab(s)");
            std::process::exit(128 + sig);
        })
        .context("spawning the signal thread")?;
    Ok(())
}

fn cleanup_everything() -> usize {
    let mut reg = registry();
    for &pid in reg.procs.keys() {
        sys::send_signal(pid, sys::SIGKILL);
    }
    reg.procs.clear();
    let labs = std::mem::take(&mut reg.labs);
    drop(reg);
    for (namespaces, dir) in labs.values() {
        for ns in namespaces {
            delete_namespace(ns);
        }
        let _ = fs::remove_dir_all(dir);
    }
    labs.len()
}

/// Kills whatever still runs inside `ns`, then deletes it. Errors are
/// ignored: this is cleanup and the namespace may be half-made or gone.
pub(crate) fn delete_namespace(ns: &str) {
    for _ in 0..3 {
        let pids = Command::new("ip")
            .args(["netns", "pids", ns])
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let pids: Vec<i32> = pids
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            sys::send_signal(pid, sys::SIGKILL);
        }
        thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Removes namespaces and work dirs left behind by harness runs whose
/// process no longer exists (e.g. SIGKILLed). Returns what it removed.
pub fn sweep_stale() -> Vec<String> {
    let mut swept = Vec::new();
    let list = Command::new("ip")
        .args(["netns", "list"])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for line in list.lines() {
        let ns = line.split_whitespace().next().unwrap_or("");
        if let Some(pid) = owner_pid(ns) {
            if !sys::pid_alive(pid) {
                delete_namespace(ns);
                swept.push(format!("namespace {ns}"));
            }
        }
    }
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(DIR_PREFIX) else {
                continue;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<i32>().ok());
            if let Some(pid) = pid {
                if !sys::pid_alive(pid) && fs::remove_dir_all(entry.path()).is_ok() {
                    swept.push(format!("dir {}", entry.path().display()));
                }
            }
        }
    }
    swept
}

/// `ahs1234-5` / `ahh1234-5` / `ahr1234-5` → 1234.
fn owner_pid(ns: &str) -> Option<i32> {
    let rest = ns
        .strip_prefix(SITE_NS_PREFIX)
        .or_else(|| ns.strip_prefix(HUB_NS_PREFIX))
        .or_else(|| ns.strip_prefix(ROUTER_NS_PREFIX))?;
    let (pid, n) = rest.split_once('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Two namespaces, a veth, the addresses, and a work directory with `site/`
/// and `hub/` subdirectories for configs, sockets and logs.
pub struct Lab {
    n: u32,
    pub site_ns: String,
    pub hub_ns: String,
    pub dir: PathBuf,
    /// Copy the work dir here when the lab is dropped.
    keep: Option<PathBuf>,
    /// The NAT router of a [`Lab::create_nat`] lab.
    pub nat: Option<NatRouter>,
}

/// The router namespace of a NAT lab.
pub struct NatRouter {
    pub ns: String,
    pub behind: Behind,
    /// Its interface towards the public side (the one it masquerades on).
    outside: String,
}

impl Lab {
    /// Builds a lab. `site_inner`/`hub_inner` are extra /32 addresses put on
    /// each side's `lo` next to 10.10.0.1 / 10.20.0.1.
    pub fn create(
        site_inner: &[Ipv4Addr],
        hub_inner: &[Ipv4Addr],
        keep: Option<PathBuf>,
    ) -> Result<Lab> {
        Lab::build(site_inner, hub_inner, keep, None)
    }

    /// [`Lab::create`] with a NAT router between the two namespaces and
    /// `behind` on the private side of it (see the module doc).
    pub fn create_nat(
        site_inner: &[Ipv4Addr],
        hub_inner: &[Ipv4Addr],
        keep: Option<PathBuf>,
        behind: Behind,
    ) -> Result<Lab> {
        Lab::build(site_inner, hub_inner, keep, Some(behind))
    }

    fn build(
        site_inner: &[Ipv4Addr],
        hub_inner: &[Ipv4Addr],
        keep: Option<PathBuf>,
        behind: Option<Behind>,
    ) -> Result<Lab> {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("harness is shutting down");
        }
        let pid = std::process::id();
        let n = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
        let lab = Lab {
            n,
            site_ns: format!("{SITE_NS_PREFIX}{pid}-{n}"),
            hub_ns: format!("{HUB_NS_PREFIX}{pid}-{n}"),
            dir: std::env::temp_dir().join(format!("{DIR_PREFIX}{pid}-{n}")),
            keep,
            nat: behind.map(|behind| NatRouter {
                ns: format!("{ROUTER_NS_PREFIX}{pid}-{n}"),
                behind,
                outside: format!("vro{pid}-{n}"),
            }),
        };
        // Register before creating anything, so an interrupt in the middle
        // still finds it. From here on, Drop undoes whatever got made.
        let mut namespaces = vec![lab.site_ns.clone(), lab.hub_ns.clone()];
        namespaces.extend(lab.nat.as_ref().map(|r| r.ns.clone()));
        registry().labs.insert(n, (namespaces, lab.dir.clone()));
        let _ = fs::remove_dir_all(&lab.dir);
        fs::create_dir_all(lab.site_dir()).context("creating the lab work dir")?;
        fs::create_dir_all(lab.hub_dir()).context("creating the lab work dir")?;

        let (vs, vh) = (format!("vs{pid}-{n}"), format!("vh{pid}-{n}"));
        ip(&["netns", "add", &lab.site_ns])?;
        ip(&["netns", "add", &lab.hub_ns])?;
        if let Some(router) = &lab.nat {
            lab.build_nat(router, &vs, &vh, &format!("vri{pid}-{n}"))?;
            for (ns, inner, extra) in [
                (&lab.site_ns, SITE_INNER, site_inner),
                (&lab.hub_ns, HUB_INNER, hub_inner),
            ] {
                add_inner(ns, inner, extra)?;
            }
            return Ok(lab);
        }
        // Created directly inside the namespaces: nothing is ever left in
        // the host namespace, even if we are killed right here.
        ip(&[
            "link",
            "add",
            &vs,
            "netns",
            &lab.site_ns,
            "type",
            "veth",
            "peer",
            "name",
            &vh,
            "netns",
            &lab.hub_ns,
        ])?;
        let sides = [
            (&lab.site_ns, &vs, SITE_ADDR, SITE_INNER, site_inner),
            (&lab.hub_ns, &vh, HUB_ADDR, HUB_INNER, hub_inner),
        ];
        for (ns, dev, addr, inner, extra) in sides {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            add_inner(ns, inner, extra)?;
        }
        Ok(lab)
    }

    /// The router namespace, its two veths, forwarding and the masquerade
    /// rule. `vs`/`vh` are the site's and the hub's interfaces.
    fn build_nat(&self, router: &NatRouter, vs: &str, vh: &str, inside: &str) -> Result<()> {
        let r = router.ns.as_str();
        ip(&["netns", "add", r])?;
        // (inside namespace, its dev) and (outside namespace, its dev, its
        // address, the public address the router takes on its behalf).
        let ((in_ns, in_dev), (out_ns, out_dev, out_addr, public)) = match router.behind {
            Behind::Site => ((&self.site_ns, vs), (&self.hub_ns, vh, HUB_ADDR, SITE_ADDR)),
            Behind::Hub => ((&self.hub_ns, vh), (&self.site_ns, vs, SITE_ADDR, HUB_ADDR)),
        };
        for (ns, dev, peer) in [
            (in_ns, in_dev, inside),
            (out_ns, out_dev, &router.outside[..]),
        ] {
            ip(&[
                "link", "add", dev, "netns", ns, "type", "veth", "peer", "name", peer, "netns", r,
            ])?;
        }
        let sides = [
            (in_ns.as_str(), in_dev, NAT_INSIDE),
            (out_ns.as_str(), out_dev, out_addr),
            (r, inside, NAT_GATEWAY),
            (r, &router.outside[..], public),
        ];
        for (ns, dev, addr) in sides {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        ip(&["-n", in_ns, "route", "add", "default", "via", NAT_GATEWAY])?;
        ip(&["-n", r, "link", "set", "lo", "up"])?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let out = run(&mut cmd, Duration::from_secs(10))?;
        if !out.success() {
            bail!("enabling forwarding in {r}: {}", out.text.trim());
        }
        // UDP gets a port from the range (so the peer sees a mapping, not
        // the inside's own 500/4500); anything else keeps its port.
        nft(
            r,
            &format!(
                "table ip harness_nat {{\n  chain postrouting {{\n    \
                 type nat hook postrouting priority srcnat; policy accept;\n    \
                 {}\n  }}\n}}\n",
                nat_rules(&router.outside, "masquerade to :", "masquerade", NAT_PORTS)
            ),
        )
    }

    /// The NAT forgets its mappings and makes new ones from another public
    /// address and port range: the SNAT rule is replaced and the router's
    /// conntrack table flushed, so the inside's next datagram gets a fresh
    /// mapping (what a NAT reboot or a CGNAT timeout does).
    pub fn nat_remap(&self) -> Result<()> {
        let router = self.nat.as_ref().context("not a NAT lab")?;
        let r = router.ns.as_str();
        ip(&[
            "-n",
            r,
            "addr",
            "add",
            &format!("{NAT_REMAP_ADDR}/24"),
            "dev",
            &router.outside,
        ])?;
        nft(
            r,
            &format!(
                "flush chain ip harness_nat postrouting\n{}\n",
                nat_rules(
                    &router.outside,
                    &format!("snat to {NAT_REMAP_ADDR}:"),
                    &format!("snat to {NAT_REMAP_ADDR}"),
                    NAT_REMAP_PORTS
                )
                .lines()
                .map(|l| format!("add rule ip harness_nat postrouting {}", l.trim()))
                .collect::<Vec<_>>()
                .join("\n")
            ),
        )?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", r, "conntrack", "-F"]);
        let out = run(&mut cmd, Duration::from_secs(10))
            .context("running conntrack (apt-get install conntrack)")?;
        if !out.success() {
            bail!("conntrack -F in {r} failed: {}", out.text.trim());
        }
        Ok(())
    }

    /// The address anyhubd listens on (private behind a NAT).
    /// The site's veth towards the hub (not in a NAT lab, whose site
    /// talks to its router).
    pub fn site_if(&self) -> String {
        format!("vs{}-{}", std::process::id(), self.n)
    }

    pub fn hub_addr(&self) -> &'static str {
        match self.nat.as_ref().map(|r| r.behind) {
            Some(Behind::Hub) => NAT_INSIDE,
            _ => HUB_ADDR,
        }
    }

    pub fn site_dir(&self) -> PathBuf {
        self.dir.join("site")
    }

    pub fn hub_dir(&self) -> PathBuf {
        self.dir.join("hub")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        delete_namespace(&self.site_ns);
        delete_namespace(&self.hub_ns);
        if let Some(router) = &self.nat {
            delete_namespace(&router.ns);
        }
        if let Some(keep) = &self.keep {
            if let Err(e) = copy_logs(&self.dir, keep) {
                eprintln!("interop: keeping logs in {}: {e:#}", keep.display());
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
        registry().labs.remove(&self.n);
    }
}

/// `lo` up with the side's inner address and the `extra` ones.
pub(crate) fn add_inner(ns: &str, inner: Ipv4Addr, extra: &[Ipv4Addr]) -> Result<()> {
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    let mut inner_addrs = vec![inner];
    inner_addrs.extend(extra.iter().copied().filter(|a| *a != inner));
    for a in inner_addrs {
        ip(&["-n", ns, "addr", "add", &format!("{a}/32"), "dev", "lo"])?;
    }
    Ok(())
}

/// The NAT router's two postrouting rules for traffic from the inside
/// leaving on `outside`: UDP with `udp_action` + the port range, the rest
/// with `other_action`. One rule a line.
fn nat_rules(outside: &str, udp_action: &str, other_action: &str, ports: (u16, u16)) -> String {
    let from = format!("oifname \"{outside}\" ip saddr {NAT_INSIDE_NET}");
    format!(
        "{from} ip protocol udp {udp_action}{}-{}\n    {from} {other_action}",
        ports.0, ports.1
    )
}

/// Copies the regular files of a work dir (configs, logs; not sockets).
pub(crate) fn copy_logs(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let dest = to.join(entry.file_name());
        if ty.is_dir() {
            copy_logs(&entry.path(), &dest)?;
        } else if ty.is_file() {
            fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

pub(crate) fn ip(args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let out = run(&mut cmd, Duration::from_secs(10))?;
    if !out.success() {
        bail!("`ip {}` failed: {}", args.join(" "), out.text.trim());
    }
    Ok(())
}

/// A default route in namespace `ns` via `gw`.
pub fn default_route(ns: &str, gw: &str) -> Result<()> {
    ip(&["-n", ns, "route", "add", "default", "via", gw])
}

/// Resident memory of process `pid`, in KiB (VmRSS).
pub fn rss_kib(pid: i32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))
}

/// Runs an nftables script inside namespace `ns` (`nft -f -`).
pub fn nft(ns: &str, script: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running nft")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft in {ns} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Drops every datagram `ns` receives from `from` until [`unblock`]: a
/// path that loses packets one way, to make exchanges cross.
pub fn block_from(ns: &str, from: &str) -> Result<()> {
    nft(
        ns,
        &format!(
            "table inet harness_block {{\n  chain input {{\n    type filter hook input priority -10; policy accept;\n    ip saddr {from} meta l4proto udp drop\n  }}\n}}\n"
        ),
    )
}

/// Undoes [`block_from`].
pub fn unblock(ns: &str) -> Result<()> {
    nft(ns, "delete table inet harness_block\n")
}

/// A daemon started by the harness. Dropping it stops it (SIGTERM, then
/// SIGKILL after a grace period). Its stdout and stderr go to `log`.
pub struct Proc {
    name: String,
    child: Child,
    pub log: PathBuf,
    reaped: Option<ExitStatus>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let file2 = file.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(file).stderr(file2);
        sys::unblock_in_child(&mut cmd);
        // Hold the registry lock across spawn so the signal thread cannot
        // miss a process that exists but is not registered yet.
        let mut reg = registry();
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        reg.procs.insert(child.id() as i32, name.to_string());
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            reaped: None,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            self.reaped = self.child.try_wait().ok().flatten();
        }
        self.reaped
    }

    /// SIGKILL and reap.
    pub fn kill_hard(&mut self) {
        if self.exited().is_none() {
            sys::send_signal(self.pid(), sys::SIGKILL);
            self.reaped = self.child.wait().ok();
        }
        registry().procs.remove(&self.pid());
    }

    /// SIGTERM, wait up to 3 s, then SIGKILL.
    pub fn stop(&mut self) {
        if self.exited().is_none() {
            sys::send_signal(self.pid(), sys::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while self.exited().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            if self.exited().is_none() {
                eprintln!("interop: {} ignored SIGTERM, killing it", self.name);
            }
        }
        self.kill_hard();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Output of a short-lived command: stdout followed by stderr.
pub struct Output {
    /// `None` if the command was killed because it ran past its timeout.
    pub status: Option<ExitStatus>,
    pub text: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Runs a command to completion, killing it after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    sys::unblock_in_child(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    let readers = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .map(|r| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut text = String::new();
    for r in readers {
        text.push_str(&String::from_utf8_lossy(&r.join().unwrap_or_default()));
    }
    Ok(Output { status, text })
}

/// Retries `check` every 200 ms until it passes or `within` has elapsed;
/// returns the last error.
pub fn eventually<T>(within: Duration, mut check: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The last `lines` lines of a log file that pass `keep`, or a note why
/// there are none.
pub fn tail_where(path: &Path, lines: usize, keep: impl Fn(&str) -> bool) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().filter(|l| keep(l)).collect();
            let start = all.len().saturating_sub(lines);
            if all.is_empty() {
                "(empty)".to_string()
            } else {
                all[start..].join("\n")
            }
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

pub fn tail(path: &Path, lines: usize) -> String {
    strip_ansi(&tail_where(path, lines, |_| true))
}

/// Removes terminal colour sequences (ESC [ ... letter), which tracing
/// writes even when stderr is a file.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The first host of an IPv4 CIDR ("10.10.1.0/24" → 10.10.1.1), and
/// whether `addr` lies inside it. Used to give libipsec a local address in
/// every local traffic selector (it refuses to install a route otherwise).
pub fn cidr_first_host(cidr: &str) -> Option<(Ipv4Addr, u32, u8)> {
    let cidr = cidr.split('[').next()?;
    let (addr, len) = cidr.split_once('/').unwrap_or((cidr, "32"));
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let net = u32::from(addr) & mask;
    let host = if len >= 31 { net } else { net + 1 };
    Some((Ipv4Addr::from(host), net, len))
}

pub fn cidr_contains(cidr: &str, addr: Ipv4Addr) -> bool {
    match cidr_first_host(cidr) {
        Some((_, net, len)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(addr) & mask == net
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_our_names() {
        assert_eq!(owner_pid("ahs1234-5"), Some(1234));
        assert_eq!(owner_pid("ahh77-12"), Some(77));
        assert_eq!(owner_pid("ahr77-3"), Some(77));
        assert_eq!(owner_pid("ahs1234"), None);
        assert_eq!(owner_pid("ahs1234-x"), None);
        assert_eq!(owner_pid("pa1234"), None);
    }

    #[test]
    fn strips_colours() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x"),
            "2026  INFO x"
        );
    }

    #[test]
    fn cidr_helpers() {
        assert_eq!(
            cidr_first_host("10.10.1.0/24").map(|c| c.0),
            Some(Ipv4Addr::new(10, 10, 1, 1))
        );
        assert!(cidr_contains("10.10.0.0/16", SITE_INNER));
        assert!(!cidr_contains("10.10.1.0/24", SITE_INNER));
        assert!(cidr_contains("10.20.0.0/24[tcp/443]", HUB_INNER));
    }
}
