//! The load generator: our own initiator (`anyhub_ike::Endpoint`) driven by
//! a single-threaded loop over non-blocking UDP sockets and epoll.
//!
//! Every handshake is IKE_SA_INIT + IKE_AUTH with one child SA, started
//! directly on UDP 4500 (RFC 7296 §2.23) from one of many source
//! addresses, so the responder sees many peers. When the child SA is up
//! the generator deletes the IKE SA (INFORMATIONAL DELETE, §1.4.1), so
//! the responder forgets it and its memory stays flat across phases.
//!
//! One "anchor" IKE SA stays up for the whole run: with another IKE SA
//! established, our initiator sends no INITIAL_CONTACT (§2.4), which would
//! make both responders tear down the sibling SAs of the same identity.
//!
//! Loads: a window of N handshakes in flight (closed loop, for the
//! saturation rate) or a fixed start rate (open loop, for latency).
//! Latency is from the IKE_SA_INIT request leaving to the IKE_AUTH
//! response processed (the child SA event).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use anyhub_crypto::SystemRng;
use anyhub_ike::{Endpoint, EndpointConfig, Event, IkeSaHandle, RetransmitConfig, TunnelConfig};

use crate::sys::{self, Epoll};

/// RFC 3948 §2.2: IKE on port 4500 carries four zero octets in front.
const NON_ESP_MARKER: [u8; 4] = [0; 4];
/// An open-loop phase never has more than this many handshakes in flight
/// (a stalled responder must not make the generator allocate forever).
const MAX_IN_FLIGHT: usize = 4096;
/// Deletes in flight beyond this stop new handshakes until they drain.
const MAX_DELETING: usize = 4096;

/// How handshakes are started.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// Keep this many handshakes in flight.
    Window(usize),
    /// Start this many per second.
    Rate(f64),
}

/// What one phase measured. Counts cover the measurement interval only.
#[derive(Clone, Debug, Default)]
pub struct PhaseResult {
    pub seconds: f64,
    /// Handshakes whose child SA came up inside the interval.
    pub completed: u64,
    /// Setup latencies (ms) of handshakes started inside the interval.
    pub latencies_ms: Vec<f64>,
    /// Handshakes started inside the interval that never came up.
    pub failed: u64,
    /// Why, by reason.
    pub failures: BTreeMap<String, u64>,
    /// Requests the generator retransmitted (a lost or late answer).
    pub retransmits: u64,
    /// Responder CPU seconds (utime + stime, all threads) in the interval.
    pub responder_cpu_s: f64,
    /// The generator thread's CPU seconds in the interval.
    pub generator_cpu_s: f64,
    /// UDP receive-buffer drops (RcvbufErrors) at the responder / here.
    pub responder_rcvbuf_drops: u64,
    pub generator_rcvbuf_drops: u64,
    pub send_errors: u64,
    /// Open loop: starts skipped because MAX_IN_FLIGHT were under way.
    pub skipped_starts: u64,
    /// CPU seconds both cores spent on anything but the responder and the
    /// generator thread (another process would make the numbers dishonest),
    /// and stolen by the hypervisor.
    pub other_cpu_s: f64,
    pub steal_s: f64,
}

impl PhaseResult {
    pub fn rate(&self) -> f64 {
        self.completed as f64 / self.seconds
    }

    pub fn responder_cpu_pct(&self) -> f64 {
        100.0 * self.responder_cpu_s / self.seconds
    }

    pub fn generator_cpu_pct(&self) -> f64 {
        100.0 * self.generator_cpu_s / self.seconds
    }

    /// Other load and steal, in % of one core.
    pub fn other_cpu_pct(&self) -> f64 {
        100.0 * self.other_cpu_s.max(0.0) / self.seconds
    }

    pub fn steal_pct(&self) -> f64 {
        100.0 * self.steal_s / self.seconds
    }

    /// Responder CPU seconds per 1000 handshakes.
    pub fn cpu_s_per_1k(&self) -> f64 {
        1000.0 * self.responder_cpu_s / self.completed.max(1) as f64
    }

    /// The `p`-th percentile (0..=100) of the latencies, nearest rank.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        percentile(&self.latencies_ms, p)
    }
}

pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// The process being measured: its pid, for /proc/<pid>/stat and
/// /proc/<pid>/net/snmp (its network namespace's UDP counters).
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub pid: i32,
}

impl Target {
    /// utime + stime of every thread, in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .with_context(|| format!("reading /proc/{}/stat", self.pid))?;
        cpu_from_stat(&stat, sys::clock_ticks_per_second())
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS")
    }

    pub fn rcvbuf_errors(&self) -> u64 {
        udp_rcvbuf_errors(&format!("/proc/{}/net/snmp", self.pid))
    }
}

/// Fields 14 and 15 of /proc/<pid>/stat (after the parenthesised comm,
/// which may contain spaces).
fn cpu_from_stat(stat: &str, ticks: u64) -> Result<f64> {
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/<pid>/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): utime is field 14, stime 15.
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).context("utime")?;
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).context("stime")?;
    Ok((utime + stime) as f64 / ticks as f64)
}

/// (busy, steal) seconds of all CPUs together, from /proc/stat's "cpu"
/// line: user nice system idle iowait irq softirq steal ...
fn machine_cpu() -> (f64, f64) {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return (0.0, 0.0);
    };
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0.0, 0.0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    let ticks = sys::clock_ticks_per_second() as f64;
    let busy = at(0) + at(1) + at(2) + at(5) + at(6);
    (busy as f64 / ticks, at(7) as f64 / ticks)
}

/// RcvbufErrors from the "Udp:" lines of a /proc/.../net/snmp file.
fn udp_rcvbuf_errors(path: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string(path) else {
        return 0;
    };
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Everything read at the start and at the end of a measurement.
struct Snapshot {
    at: Instant,
    responder_cpu_s: f64,
    generator_cpu: Duration,
    responder_drops: u64,
    generator_drops: u64,
    totals: Totals,
    retransmits: u64,
    machine_busy_s: f64,
    machine_steal_s: f64,
}

/// Running totals, snapshotted at the start and end of a measurement.
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    completed: u64,
    send_errors: u64,
    skipped: u64,
}

pub struct Generator {
    /// The network namespace its sockets live in (entered for each phase,
    /// so the thread's /proc/thread-self/net counters are this one's).
    ns: String,
    endpoint: Endpoint,
    sockets: Vec<UdpSocket>,
    locals: Vec<SocketAddr>,
    by_ip: HashMap<IpAddr, usize>,
    epoll: Epoll,
    remote: SocketAddr,
    next_source: usize,
    /// Handshakes under way: when their IKE_SA_INIT left.
    started: HashMap<IkeSaHandle, Instant>,
    /// IKE SAs whose DELETE is in flight.
    deleting: HashSet<IkeSaHandle>,
    /// Up, to be deleted once the current batch of events is handled.
    to_delete: Vec<IkeSaHandle>,
    anchor: Option<IkeSaHandle>,
    /// (started, completed) of every handshake of the current phase.
    done: Vec<(Instant, Instant)>,
    /// (started, reason) of every failed handshake of the current phase.
    failed: Vec<(Instant, String)>,
    totals: Totals,
    recv_buf: Vec<u8>,
    send_buf: Vec<u8>,
    ready: Vec<u64>,
}

impl Generator {
    /// Moves the calling thread into namespace `ns`, binds one socket on
    /// port 4500 of each source address there and builds the initiator.
    pub fn new(
        ns: &str,
        tunnel: Arc<TunnelConfig>,
        sources: &[IpAddr],
        remote: SocketAddr,
    ) -> Result<Self> {
        sys::enter_netns(ns).with_context(|| format!("entering namespace {ns}"))?;
        let mut cfg = EndpointConfig::new(2, vec![tunnel]);
        cfg.natt_port = 4500;
        // Answers come within milliseconds on this link; a lost datagram
        // should cost a window slot for 2 s, not strongSwan's 4 s.
        cfg.retransmit = RetransmitConfig {
            timeout: Duration::from_secs(2),
            base: 1.8,
            tries: 3,
        };
        let endpoint = Endpoint::new(cfg, Box::new(SystemRng));
        let mut epoll = Epoll::new(sources.len())?;
        let mut sockets = Vec::new();
        let mut locals = Vec::new();
        let mut by_ip = HashMap::new();
        for (i, ip) in sources.iter().enumerate() {
            let local = SocketAddr::new(*ip, 4500);
            let s = UdpSocket::bind(local).with_context(|| format!("binding {local}"))?;
            s.set_nonblocking(true)?;
            sys::force_rcvbuf(&s, 8 << 20).context("SO_RCVBUFFORCE")?;
            epoll.add(&s, i as u64)?;
            by_ip.insert(*ip, i);
            sockets.push(s);
            locals.push(local);
        }
        Ok(Generator {
            ns: ns.to_string(),
            endpoint,
            sockets,
            locals,
            by_ip,
            epoll,
            remote,
            next_source: 0,
            started: HashMap::new(),
            deleting: HashSet::new(),
            to_delete: Vec::new(),
            anchor: None,
            done: Vec::new(),
            failed: Vec::new(),
            totals: Totals::default(),
            recv_buf: vec![0; 65_536],
            send_buf: Vec::with_capacity(65_536),
            ready: Vec::new(),
        })
    }

    /// The first handshake, kept up until [`Generator::finish`].
    pub fn establish_anchor(&mut self, within: Duration) -> Result<()> {
        let h = self.start(Instant::now())?;
        self.anchor = Some(h);
        let deadline = Instant::now() + within;
        while self.started.contains_key(&h) && Instant::now() < deadline {
            self.turn(Some(deadline))?;
        }
        if self.started.remove(&h).is_some() {
            bail!("the anchor IKE SA did not come up within {within:?}");
        }
        if let Some((_, why)) = self.failed.pop() {
            bail!("the anchor IKE SA failed: {why}");
        }
        self.done.clear();
        Ok(())
    }

    /// Deletes the anchor and waits for the answer.
    pub fn finish(&mut self) -> Result<()> {
        if let Some(h) = self.anchor.take() {
            self.endpoint.delete_ike_sa(Instant::now(), h);
            self.deleting.insert(h);
            self.drain(Duration::from_secs(5))?;
        }
        Ok(())
    }

    fn start(&mut self, now: Instant) -> Result<IkeSaHandle> {
        let local = self.locals[self.next_source % self.locals.len()];
        self.next_source += 1;
        let h = self
            .endpoint
            .initiate(now, super::TUNNEL, local, self.remote)
            .context("initiate")?;
        // The request leaves in the flush right after; its keygen is done.
        self.started.insert(h, Instant::now());
        self.flush()?;
        Ok(h)
    }

    /// Runs one phase: `warmup`, then `measure` counted, then waits for
    /// everything in flight to finish (deletes included).
    pub fn run(
        &mut self,
        load: Load,
        warmup: Duration,
        measure: Duration,
        target: Target,
    ) -> Result<PhaseResult> {
        sys::enter_netns(&self.ns).with_context(|| format!("entering namespace {}", self.ns))?;
        self.done.clear();
        self.failed.clear();
        let t0 = Instant::now();
        let t_a = t0 + warmup;
        let t_b = t_a + measure;
        let mut next_start = t0;
        let mut snap_a: Option<Snapshot> = None;
        let mut result = PhaseResult::default();
        loop {
            let now = Instant::now();
            if snap_a.is_none() && now >= t_a {
                snap_a = Some(self.snapshot(now, target)?);
            }
            if now >= t_b {
                let a = snap_a.expect("t_b after t_a");
                let b = self.snapshot(now, target)?;
                result.seconds = (b.at - a.at).as_secs_f64();
                result.responder_cpu_s = b.responder_cpu_s - a.responder_cpu_s;
                result.generator_cpu_s = (b.generator_cpu - a.generator_cpu).as_secs_f64();
                result.responder_rcvbuf_drops = b.responder_drops - a.responder_drops;
                result.generator_rcvbuf_drops = b.generator_drops - a.generator_drops;
                result.completed = b.totals.completed - a.totals.completed;
                result.send_errors = b.totals.send_errors - a.totals.send_errors;
                result.skipped_starts = b.totals.skipped - a.totals.skipped;
                result.retransmits = b.retransmits - a.retransmits;
                result.other_cpu_s = (b.machine_busy_s - a.machine_busy_s)
                    - result.responder_cpu_s
                    - result.generator_cpu_s;
                result.steal_s = b.machine_steal_s - a.machine_steal_s;
                break;
            }
            let busy = self.deleting.len() >= MAX_DELETING;
            let mut wake = t_b.min(if snap_a.is_none() { t_a } else { t_b });
            match load {
                Load::Window(n) => {
                    while !busy && self.started.len() < n {
                        self.start(now)?;
                    }
                }
                Load::Rate(r) => {
                    let gap = Duration::from_secs_f64(1.0 / r);
                    while next_start <= now {
                        if busy || self.started.len() >= MAX_IN_FLIGHT {
                            self.totals.skipped += 1;
                        } else {
                            self.start(now)?;
                        }
                        next_start += gap;
                    }
                    wake = wake.min(next_start);
                }
            }
            self.turn(Some(wake))?;
        }
        // Let the measured handshakes finish (or fail) and the deletes go.
        self.drain(Duration::from_secs(15))?;
        for &(s, e) in &self.done {
            if s >= t_a && s < t_b {
                result.latencies_ms.push((e - s).as_secs_f64() * 1e3);
            }
        }
        for (s, why) in &self.failed {
            if *s >= t_a && *s < t_b {
                result.failed += 1;
                *result.failures.entry(why.clone()).or_default() += 1;
            }
        }
        Ok(result)
    }

    fn snapshot(&self, at: Instant, target: Target) -> Result<Snapshot> {
        let (machine_busy_s, machine_steal_s) = machine_cpu();
        Ok(Snapshot {
            at,
            responder_cpu_s: target.cpu_seconds()?,
            generator_cpu: sys::thread_cpu_time(),
            responder_drops: target.rcvbuf_errors(),
            generator_drops: udp_rcvbuf_errors("/proc/thread-self/net/snmp"),
            totals: self.totals,
            retransmits: self.endpoint.counters().tx_retransmits,
            machine_busy_s,
            machine_steal_s,
        })
    }

    /// Runs the loop without starting anything until no handshake and no
    /// delete is in flight, or `within` passed (what is left then counts
    /// as failed).
    fn drain(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while (!self.started.is_empty() || !self.deleting.is_empty()) && Instant::now() < deadline {
            self.turn(Some(deadline))?;
        }
        for (_, s) in std::mem::take(&mut self.started) {
            self.failed.push((s, "no answer after the phase".into()));
        }
        self.deleting.clear();
        Ok(())
    }

    /// One turn of the loop: wait for a datagram (or `wake`, or the
    /// endpoint's timer), feed everything that arrived, fire due timers,
    /// flush.
    fn turn(&mut self, wake: Option<Instant>) -> Result<()> {
        let now = Instant::now();
        let next = [wake, self.endpoint.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let timeout_ms = match next {
            // Sub-millisecond waits spin (epoll's timeout is in ms).
            Some(t) if t <= now + Duration::from_millis(1) => 0,
            Some(t) => ((t - now).as_millis() as i32).min(1000),
            None => 1000,
        };
        self.ready.clear();
        let mut ready = std::mem::take(&mut self.ready);
        self.epoll.wait(timeout_ms, &mut ready)?;
        for &i in &ready {
            self.receive(i as usize)?;
        }
        self.ready = ready;
        let now = Instant::now();
        if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
            self.endpoint.handle_timeout(now);
        }
        self.flush()
    }

    fn receive(&mut self, i: usize) -> Result<()> {
        loop {
            let (len, from) = match self.sockets[i].recv_from(&mut self.recv_buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ICMP errors surface here; retransmission covers them.
                Err(_) => return Ok(()),
            };
            let data = &self.recv_buf[..len];
            // Keepalives and ESP are not for the IKE endpoint.
            let Some(ike) = data.strip_prefix(&NON_ESP_MARKER) else {
                continue;
            };
            self.endpoint
                .handle(Instant::now(), self.locals[i], from, ike);
            self.flush()?;
        }
    }

    /// Sends what the endpoint queued and handles its events, until quiet.
    fn flush(&mut self) -> Result<()> {
        loop {
            let mut moved = false;
            while let Some(t) = self.endpoint.poll_transmit() {
                moved = true;
                let Some(&i) = self.by_ip.get(&t.local.ip()) else {
                    bail!("transmit from {} which has no socket", t.local);
                };
                let datagram = if t.natt {
                    self.send_buf.clear();
                    self.send_buf.extend_from_slice(&NON_ESP_MARKER);
                    self.send_buf.extend_from_slice(&t.payload);
                    &self.send_buf[..]
                } else {
                    &t.payload[..]
                };
                if self.sockets[i].send_to(datagram, t.remote).is_err() {
                    // Packet loss, for retransmission to cover.
                    self.totals.send_errors += 1;
                }
            }
            while let Some(e) = self.endpoint.poll_event() {
                moved = true;
                self.on_event(e);
            }
            if !self.to_delete.is_empty() {
                moved = true;
                let now = Instant::now();
                for h in std::mem::take(&mut self.to_delete) {
                    if self.endpoint.delete_ike_sa(now, h) {
                        self.deleting.insert(h);
                    }
                }
            }
            if !moved {
                return Ok(());
            }
        }
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::ChildSaEstablished(c) => {
                let now = Instant::now();
                if let Some(s) = self.started.remove(&c.ike) {
                    self.done.push((s, now));
                    self.totals.completed += 1;
                    if Some(c.ike) != self.anchor {
                        self.to_delete.push(c.ike);
                    }
                }
            }
            Event::ChildSaFailed { ike, reason, .. } => {
                if let Some(s) = self.started.remove(&ike) {
                    self.failed
                        .push((s, format!("child SA refused ({reason:?})")));
                    self.to_delete.push(ike);
                }
            }
            Event::IkeSaFailed { info, reason } => {
                if let Some(s) = self.started.remove(&info.handle) {
                    self.failed.push((s, format!("{reason:?}")));
                }
                self.deleting.remove(&info.handle);
            }
            Event::IkeSaDeleted { info, .. } => {
                if let Some(s) = self.started.remove(&info.handle) {
                    self.failed.push((s, "deleted before its child SA".into()));
                }
                self.deleting.remove(&info.handle);
                if Some(info.handle) == self.anchor {
                    self.anchor = None;
                }
            }
            Event::IkeSaEstablished(_)
            | Event::IkeSaRekeyed { .. }
            | Event::IkeSaMoved { .. }
            | Event::IkeSaUpdated(_)
            | Event::ChildSaDeleted { .. } => {}
        }
    }

    /// Whether the anchor IKE SA is still up.
    pub fn anchor_alive(&self) -> bool {
        self.anchor.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields() {
        // comm with a space and a parenthesis, as the kernel allows.
        let stat = "4242 (charon (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 17 0";
        assert_eq!(cpu_from_stat(stat, 100).unwrap(), 3.0);
        assert!(cpu_from_stat("garbage", 100).is_err());
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
