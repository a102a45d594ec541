//! The forwarding loop: TUN ⇄ [`PacketTransform`] ⇄ UDP, batched.
//!
//! ```text
//!  outbound  TUN read (one super-packet, vnet header)
//!            └► Segments (gso.rs): MSS-sized inner packets, each written
//!               straight into the send buffer at cursor + headroom
//!               └► PacketTransform::outbound: encrypt in place, outer
//!                  datagram at the cursor
//!                  └► runs of equal-sized datagrams to one peer become one
//!                     UDP GSO message; one sendmmsg per batch
//!  inbound   recvmmsg (UDP_GRO: a message may hold up to 64 datagrams)
//!            └► PacketTransform::inbound per datagram: decrypt in place
//!               └► Gro (gro.rs): segments of one flow coalesced
//!                  └► one writev per super-packet to the TUN
//! ```
//!
//! A *queue* is one TUN queue (fd) and one UDP socket, served by two
//! threads: one per direction, so a reader blocked on one fd never delays
//! the other direction. [`Forwarder::spawn`] starts one queue per TUN fd
//! (with `IFF_MULTI_QUEUE` the kernel spreads flows over the fds by hash).
//! Buffers are allocated when a thread starts; the per-packet path
//! allocates nothing. Fds are non-blocking: a thread reads until `EAGAIN`
//! (batching across reads), flushes, retries a few times after
//! `sched_yield` ([`IoConfig::spin`]), then sleeps in `poll`.

use std::io::{self, ErrorKind};
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::gro::Gro;
use super::gso::Segments;
use super::vnet::{VnetHdr, VNET_HDR_LEN};
use crate::sys::tun::Tun;
use crate::sys::udp::{self, RecvBatch, SendBatch, MAX_GSO_BYTES, MAX_GSO_SEGMENTS};

/// The per-packet work a dataplane plugs into the loop (the ESP core, or a
/// test transform). One instance is shared by every worker thread, so it
/// is `Sync` and takes `&self`; per-SA state (sequence numbers, replay
/// windows, counters) uses atomics or short locks inside.
///
/// Buffers follow the boringtun/smoltcp pattern: the caller owns them, the
/// transform works in place and never allocates.
pub trait PacketTransform: Send + Sync + 'static {
    /// Bytes the transform may write before the inner packet (outer
    /// header: SPI, sequence number, IV…). The largest over all SAs.
    fn headroom(&self) -> usize;

    /// Bytes it may write after the inner packet (padding, trailer, ICV).
    fn tailroom(&self) -> usize;

    /// `buf[headroom()..headroom() + inner_len]` holds an inner IP packet
    /// read from the TUN device and `buf` has at least `tailroom()` bytes
    /// after it. Normally: build the outer datagram (the UDP payload, e.g.
    /// an ESP packet) in place and return [`Verdict::Network`]. May instead
    /// answer into the TUN ([`Verdict::Tun`], e.g. an ICMP Packet Too Big
    /// written into `buf`) or return [`Verdict::Done`] (dropped or
    /// consumed; the transform counts why).
    ///
    /// Starting the datagram at `buf[0]` (a header of exactly `headroom()`
    /// bytes) is fastest: any other start costs a `memmove`.
    fn outbound(&self, buf: &mut [u8], inner_len: usize) -> Verdict;

    /// `outer` is one received UDP datagram from `from`. Normally:
    /// authenticate and decrypt in place and return [`Verdict::Tun`] with
    /// the inner IP packet's range in `outer`. May instead answer the peer
    /// ([`Verdict::Network`], e.g. a reflected keepalive, range in
    /// `outer`) or return [`Verdict::Done`] (bad SPI, replay, auth failure,
    /// NAT keepalive, an IKE message the transform hands to IKE…).
    fn inbound(&self, from: SocketAddr, outer: &mut [u8]) -> Verdict;
}

/// What to do with the bytes a [`PacketTransform`] produced (boringtun's
/// `TunnResult`, reduced to what the loop can act on). Ranges are in the
/// buffer the transform was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send these bytes as one UDP datagram to `to`.
    Network {
        /// The datagram.
        range: Range<usize>,
        /// The peer.
        to: SocketAddr,
    },
    /// Write these bytes (one IP packet) to the TUN device.
    Tun(Range<usize>),
    /// Nothing to send: dropped or consumed (counted by the transform).
    Done,
}

/// How the UDP side sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpMode {
    /// One `sendto` per datagram.
    Plain,
    /// `sendmmsg`, one datagram per message.
    Mmsg,
    /// `sendmmsg` with `UDP_SEGMENT`: runs of equal-sized datagrams to one
    /// peer in one message. Falls back to [`UdpMode::Mmsg`] when refused.
    Gso,
}

/// Loop configuration.
#[derive(Clone, Copy, Debug)]
pub struct IoConfig {
    /// UDP send mode.
    pub udp: UdpMode,
    /// `UDP_GRO` on the sockets (receive many datagrams per message).
    pub udp_gro: bool,
    /// Coalesce inbound TCP segments into TUN super-packets (needs a TUN
    /// opened with `vnet_hdr` and the TSO offloads accepted).
    pub tun_gro: bool,
    /// Messages per `recvmmsg`.
    pub recv_batch: usize,
    /// How long a thread sleeps in `poll` before checking for stop.
    pub poll_interval: Duration,
    /// Retries (each after `sched_yield`) of a read that found nothing,
    /// before sleeping in `poll`. On a loaded machine the next packet is
    /// often a few microseconds away, and yielding lets the thread that
    /// makes it run, while sleeping costs a wake-up (measured in
    /// docs/tun.md: 20 is best here; 0 disables).
    pub spin: u32,
    /// One thread per queue doing both directions ([`drive_queue`])
    /// instead of one per direction.
    pub one_thread_per_queue: bool,
}

impl Default for IoConfig {
    fn default() -> Self {
        IoConfig {
            udp: UdpMode::Gso,
            udp_gro: true,
            tun_gro: true,
            recv_batch: 8,
            poll_interval: Duration::from_millis(200),
            spin: 20,
            one_thread_per_queue: false,
        }
    }
}

/// Counters for one forwarder, summed over its threads.
#[derive(Debug, Default)]
pub struct IoCounters {
    /// Packets read from the TUN device (super-packets count once).
    pub tun_reads: AtomicU64,
    /// Inner packets after segmentation.
    pub tun_segments: AtomicU64,
    /// Datagrams handed to the kernel (a failed `sendmmsg` counts its
    /// messages in `errors` too).
    pub udp_tx: AtomicU64,
    /// Send calls (`sendto`/`sendmmsg`).
    pub udp_tx_calls: AtomicU64,
    /// Datagrams received.
    pub udp_rx: AtomicU64,
    /// `recvmmsg` calls that returned data.
    pub udp_rx_calls: AtomicU64,
    /// Inner packets written to the TUN device.
    pub tun_tx_packets: AtomicU64,
    /// Writes to the TUN device.
    pub tun_writes: AtomicU64,
    /// Inner packets for which the transform returned [`Verdict::Done`]
    /// (it counts the reasons), or a range outside its buffer.
    pub drop_outbound: AtomicU64,
    /// Datagrams for which the transform returned [`Verdict::Done`], or a
    /// range outside its buffer.
    pub drop_inbound: AtomicU64,
    /// Answers the transform sent the other way: outbound ones to the TUN,
    /// inbound ones to the network.
    pub replies: AtomicU64,
    /// Packets lost to malformed TUN input, full buffers or I/O errors.
    pub errors: AtomicU64,
}

impl IoCounters {
    fn add(c: &AtomicU64, n: u64) {
        if n > 0 {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Send-side buffer: room for a full batch of super-packets.
const TX_BUF: usize = 512 * 1024;
/// Receive slot: any UDP GRO message.
const RX_SLOT: usize = 65_536;
/// TUN read buffer: vnet header + a 64 KiB super-packet.
const TUN_BUF: usize = VNET_HDR_LEN + 65_536;

/// Running worker threads; [`stop`](Self::stop) joins them.
pub struct Forwarder {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    counters: Arc<IoCounters>,
}

impl Forwarder {
    /// Starts two threads (outbound, inbound) per `(tun, socket,
    /// transform)` queue. Queues may share one transform (`Arc::clone`)
    /// or each have their own handle. Sockets should already be bound;
    /// they are made non-blocking, get `UDP_GRO` if configured, and large
    /// buffers.
    pub fn spawn<T: PacketTransform>(
        queues: Vec<(Tun, UdpSocket, Arc<T>)>,
        cfg: IoConfig,
    ) -> io::Result<Forwarder> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(IoCounters::default());
        let mut threads = Vec::new();
        for (qi, (tun, sock, xf)) in queues.into_iter().enumerate() {
            tun.set_nonblocking(true)?;
            sock.set_nonblocking(true)?;
            udp::set_buffers(sock.as_raw_fd(), 4 << 20);
            let mut cfg = cfg;
            if cfg.udp_gro && udp::set_udp_gro(sock.as_raw_fd(), true).is_err() {
                cfg.udp_gro = false;
            }
            if cfg.udp == UdpMode::Gso && !udp::probe_udp_gso(sock.as_raw_fd()) {
                cfg.udp = UdpMode::Mmsg;
            }
            if !tun.vnet_hdr() {
                cfg.tun_gro = false;
            }
            let tun = Arc::new(tun);
            let sock = Arc::new(sock);
            if cfg.one_thread_per_queue {
                let (stop, ctr) = (stop.clone(), counters.clone());
                threads.push(
                    std::thread::Builder::new()
                        .name(format!("dp-q-{qi}"))
                        .spawn(move || drive_queue(&tun, &sock, cfg, &*xf, &stop, &ctr))?,
                );
                continue;
            }
            {
                let (tun, sock, xf, stop, ctr) = (
                    tun.clone(),
                    sock.clone(),
                    xf.clone(),
                    stop.clone(),
                    counters.clone(),
                );
                threads.push(
                    std::thread::Builder::new()
                        .name(format!("dp-out-{qi}"))
                        .spawn(move || drive_outbound(&tun, &sock, cfg, &*xf, &stop, &ctr))?,
                );
            }
            let (xf, stop, ctr) = (xf.clone(), stop.clone(), counters.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("dp-in-{qi}"))
                    .spawn(move || drive_inbound(&sock, &tun, cfg, &*xf, &stop, &ctr))?,
            );
        }
        Ok(Forwarder {
            stop,
            threads,
            counters,
        })
    }

    /// The counters, live.
    pub fn counters(&self) -> &Arc<IoCounters> {
        &self.counters
    }

    /// Asks every thread to stop and waits for them (at most about one
    /// `poll_interval`).
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// A run of datagrams being gathered into one send message.
#[derive(Clone, Copy)]
struct Run {
    off: usize,
    len: usize,
    seg: usize,
    count: usize,
    /// A shorter datagram ended the run.
    closed: bool,
}

struct Sender {
    buf: Vec<u8>,
    cursor: usize,
    batch: SendBatch,
    run: Option<(Run, SocketAddr)>,
    mode: UdpMode,
    /// Datagrams queued but not yet sent.
    queued: u64,
}

impl Sender {
    fn new(mode: UdpMode) -> Sender {
        Sender {
            buf: vec![0; TX_BUF],
            cursor: 0,
            batch: SendBatch::new(64),
            run: None,
            mode,
            queued: 0,
        }
    }

    /// Queues the datagram just written at `buf[cursor..cursor + len]`.
    fn queue(&mut self, sock: &UdpSocket, len: usize, to: SocketAddr, ctr: &IoCounters) {
        let off = self.cursor;
        if self.mode == UdpMode::Plain {
            if sock.send_to(&self.buf[off..off + len], to).is_err() {
                IoCounters::add(&ctr.errors, 1);
            } else {
                IoCounters::add(&ctr.udp_tx, 1);
            }
            IoCounters::add(&ctr.udp_tx_calls, 1);
            return;
        }
        self.cursor += len;
        self.queued += 1;
        if self.mode == UdpMode::Gso {
            if let Some((run, dst)) = &mut self.run {
                if *dst == to
                    && !run.closed
                    && run.off + run.len == off
                    && len <= run.seg
                    && run.count < MAX_GSO_SEGMENTS
                    && run.len + len <= MAX_GSO_BYTES
                {
                    run.len += len;
                    run.count += 1;
                    run.closed = len < run.seg;
                    return;
                }
            }
        }
        self.end_run(sock, ctr);
        self.run = Some((
            Run {
                off,
                len,
                seg: len,
                count: 1,
                closed: false,
            },
            to,
        ));
    }

    fn end_run(&mut self, sock: &UdpSocket, ctr: &IoCounters) {
        if let Some((run, dst)) = self.run.take() {
            if self.batch.is_full() {
                self.send(sock, ctr);
            }
            let seg = if self.mode == UdpMode::Gso {
                run.seg
            } else {
                0
            };
            self.batch.push(run.off, run.len, seg, dst);
        }
    }

    /// Whether a datagram of up to `need` bytes fits after the cursor.
    fn room(&self, need: usize) -> bool {
        self.cursor + need <= self.buf.len()
    }

    fn flush(&mut self, sock: &UdpSocket, ctr: &IoCounters) {
        self.end_run(sock, ctr);
        self.send(sock, ctr);
        self.cursor = 0;
    }

    fn send(&mut self, sock: &UdpSocket, ctr: &IoCounters) {
        if self.batch.is_empty() {
            return;
        }
        let msgs = self.batch.len();
        let (sent, err) = self.batch.send(sock.as_raw_fd(), &self.buf);
        IoCounters::add(&ctr.udp_tx_calls, 1);
        if let Some(e) = err {
            // EIO/EINVAL: the route's device cannot do UDP GSO (no
            // checksum offload); from now on one datagram per message.
            if self.mode == UdpMode::Gso
                && matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL))
            {
                self.mode = UdpMode::Mmsg;
            }
            IoCounters::add(&ctr.errors, (msgs - sent) as u64);
        }
        IoCounters::add(&ctr.udp_tx, self.queued);
        self.queued = 0;
    }
}

/// The outbound half's buffers.
struct OutState {
    rx: Vec<u8>,
    tx: Sender,
    head: usize,
    tail: usize,
}

impl OutState {
    fn new<T: PacketTransform + ?Sized>(cfg: &IoConfig, xf: &T) -> OutState {
        OutState {
            rx: vec![0u8; TUN_BUF],
            tx: Sender::new(cfg.udp),
            head: xf.headroom(),
            tail: xf.tailroom(),
        }
    }

    /// Reads and forwards up to `max` packets from the TUN, then flushes
    /// the send batch. Returns how many were read (0: nothing waiting).
    fn step<T: PacketTransform + ?Sized>(
        &mut self,
        tun: &Tun,
        sock: &UdpSocket,
        xf: &T,
        ctr: &IoCounters,
        max: usize,
    ) -> usize {
        let mut reads = 0;
        while reads < max {
            match tun.read(&mut self.rx) {
                Ok(n) => {
                    reads += 1;
                    self.forward(n, tun, sock, xf, ctr);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() != ErrorKind::WouldBlock {
                        IoCounters::add(&ctr.errors, 1);
                    }
                    break;
                }
            }
        }
        self.tx.flush(sock, ctr);
        reads
    }

    /// Segments, transforms and queues the `n` bytes just read.
    fn forward<T: PacketTransform + ?Sized>(
        &mut self,
        n: usize,
        tun: &Tun,
        sock: &UdpSocket,
        xf: &T,
        ctr: &IoCounters,
    ) {
        let (head, tail) = (self.head, self.tail);
        let tx = &mut self.tx;
        IoCounters::add(&ctr.tun_reads, 1);
        let (hdr, pkt) = if tun.vnet_hdr() {
            let Some(h) = VnetHdr::parse(&self.rx[..n]) else {
                IoCounters::add(&ctr.errors, 1);
                return;
            };
            (h, &mut self.rx[VNET_HDR_LEN..n])
        } else {
            (VnetHdr::default(), &mut self.rx[..n])
        };
        let segs = match Segments::new(&hdr, pkt) {
            Ok(s) => s,
            Err(_) => {
                IoCounters::add(&ctr.errors, 1);
                return;
            }
        };
        IoCounters::add(&ctr.tun_segments, segs.len() as u64);
        let max = head + segs.max_segment_len() + tail;
        for i in 0..segs.len() {
            if !tx.room(max) {
                tx.flush(sock, ctr);
            }
            let at = tx.cursor;
            let slot = &mut tx.buf[at..at + max];
            let Some(len) = segs.write(i, &mut slot[head..]) else {
                IoCounters::add(&ctr.errors, 1);
                continue;
            };
            let blen = head + len + tail;
            match xf.outbound(&mut slot[..blen], len) {
                Verdict::Network { range, to } if range.end <= blen && !range.is_empty() => {
                    let dlen = range.len();
                    if range.start != 0 {
                        slot.copy_within(range, 0);
                    }
                    tx.queue(sock, dlen, to, ctr);
                }
                Verdict::Tun(r) if r.end <= blen && !r.is_empty() => {
                    IoCounters::add(&ctr.replies, 1);
                    if write_tun(tun, &slot[r]).is_err() {
                        IoCounters::add(&ctr.errors, 1);
                    }
                }
                _ => IoCounters::add(&ctr.drop_outbound, 1),
            }
        }
    }
}

/// The inbound half's buffers.
struct InState {
    rb: RecvBatch,
    gro: Gro,
    tun_gro: bool,
}

impl InState {
    fn new(cfg: &IoConfig) -> InState {
        InState {
            rb: RecvBatch::new(cfg.recv_batch.max(1), RX_SLOT),
            gro: Gro::new(),
            tun_gro: cfg.tun_gro,
        }
    }

    /// One `recvmmsg` and everything it brought, to the TUN. Returns the
    /// messages received (0: nothing waiting).
    fn step<T: PacketTransform + ?Sized>(
        &mut self,
        sock: &UdpSocket,
        tun: &Tun,
        xf: &T,
        ctr: &IoCounters,
    ) -> usize {
        let got = match self.rb.recv(sock.as_raw_fd()) {
            Ok(n) => n,
            Err(e) => {
                if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) {
                    IoCounters::add(&ctr.errors, 1);
                }
                return 0;
            }
        };
        IoCounters::add(&ctr.udp_rx_calls, 1);
        let gro = &mut self.gro;
        let tun_gro = self.tun_gro;
        let (msgs, buf) = self.rb.split_mut();
        let mut written = 0u64;
        let mut writes = 0u64;
        for m in msgs {
            let Some(from) = m.from else { continue };
            let mut o = m.off;
            let end = m.off + m.len;
            while o < end {
                let l = m.seg.min(end - o);
                IoCounters::add(&ctr.udp_rx, 1);
                match xf.inbound(from, &mut buf[o..o + l]) {
                    Verdict::Network { range, to } if range.end <= l && !range.is_empty() => {
                        IoCounters::add(&ctr.replies, 1);
                        let d = &buf[o + range.start..o + range.end];
                        if sock.send_to(d, to).is_err() {
                            IoCounters::add(&ctr.errors, 1);
                        }
                    }
                    Verdict::Tun(r) if r.end <= l && !r.is_empty() => {
                        let (io, il) = (o + r.start, r.len());
                        if tun_gro {
                            if gro.is_full() {
                                let f = gro.flush(buf, |iov| tun.write_vectored(iov));
                                written += f.packets as u64;
                                writes += f.writes as u64;
                                IoCounters::add(&ctr.errors, f.errors as u64);
                            }
                            gro.push(buf, io, il);
                        } else {
                            if write_tun(tun, &buf[io..io + il]).is_err() {
                                IoCounters::add(&ctr.errors, 1);
                            }
                            written += 1;
                            writes += 1;
                        }
                    }
                    _ => IoCounters::add(&ctr.drop_inbound, 1),
                }
                o += l;
            }
        }
        if tun_gro {
            let f = gro.flush(buf, |iov| tun.write_vectored(iov));
            written += f.packets as u64;
            writes += f.writes as u64;
            IoCounters::add(&ctr.errors, f.errors as u64);
        }
        IoCounters::add(&ctr.tun_tx_packets, written);
        IoCounters::add(&ctr.tun_writes, writes);
        got
    }
}

/// Retries up to `cfg.spin` times after `sched_yield`, then sleeps in
/// `poll` on `fds`. `idle` counts the empty rounds so far.
fn idle_wait(cfg: &IoConfig, idle: &mut u32, fds: &[std::os::fd::RawFd]) {
    if *idle < cfg.spin {
        *idle += 1;
        std::thread::yield_now();
    } else {
        *idle = 0;
        let _ = crate::sys::poll_readable_any(fds, cfg.poll_interval);
    }
}

/// TUN → segment → transform → UDP, until `stop`.
pub fn drive_outbound<T: PacketTransform + ?Sized>(
    tun: &Tun,
    sock: &UdpSocket,
    cfg: IoConfig,
    xf: &T,
    stop: &AtomicBool,
    ctr: &IoCounters,
) {
    let mut out = OutState::new(&cfg, xf);
    let mut idle = 0;
    while !stop.load(Ordering::Relaxed) {
        if out.step(tun, sock, xf, ctr, usize::MAX) == 0 {
            idle_wait(&cfg, &mut idle, &[tun.fd()]);
        } else {
            idle = 0;
        }
    }
}

/// UDP → transform → coalesce → TUN, until `stop`.
pub fn drive_inbound<T: PacketTransform + ?Sized>(
    sock: &UdpSocket,
    tun: &Tun,
    cfg: IoConfig,
    xf: &T,
    stop: &AtomicBool,
    ctr: &IoCounters,
) {
    let mut inb = InState::new(&cfg);
    let mut idle = 0;
    while !stop.load(Ordering::Relaxed) {
        if inb.step(sock, tun, xf, ctr) == 0 {
            idle_wait(&cfg, &mut idle, &[sock.as_raw_fd()]);
        } else {
            idle = 0;
        }
    }
}

/// Both directions of a queue in one thread, until `stop`: a batch of TUN
/// reads, then a batch of datagrams, in turn. The ACKs our own TUN write
/// makes the kernel send are picked up without waking another thread.
pub fn drive_queue<T: PacketTransform + ?Sized>(
    tun: &Tun,
    sock: &UdpSocket,
    cfg: IoConfig,
    xf: &T,
    stop: &AtomicBool,
    ctr: &IoCounters,
) {
    let mut out = OutState::new(&cfg, xf);
    let mut inb = InState::new(&cfg);
    let mut idle = 0;
    while !stop.load(Ordering::Relaxed) {
        let a = out.step(tun, sock, xf, ctr, 8);
        let b = inb.step(sock, tun, xf, ctr);
        if a + b == 0 {
            idle_wait(&cfg, &mut idle, &[tun.fd(), sock.as_raw_fd()]);
        } else {
            idle = 0;
        }
    }
}

/// Writes one IP packet to the TUN, with an all-zero vnet header (no GSO,
/// checksum complete) when the device has them.
fn write_tun(tun: &Tun, pkt: &[u8]) -> io::Result<usize> {
    if tun.vnet_hdr() {
        let none = [0u8; VNET_HDR_LEN];
        tun.write_vectored(&[io::IoSlice::new(&none), io::IoSlice::new(pkt)])
    } else {
        tun.write(pkt)
    }
}
