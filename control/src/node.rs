//! The node driver: sockets, the one timer, signals and the status socket
//! around the sans-IO [`Endpoint`]. All protocol logic is in the endpoint;
//! this file only moves bytes and events (quinn's `ConnectionDriver`).
//!
//! One current-thread tokio loop, one `select!` over:
//! - a datagram on any UDP socket (IKE on `port`, NAT-T on `natt_port` of
//!   every listen address),
//! - the endpoint's next timeout,
//! - a status request (clients are served by small tasks that ask the loop
//!   for a snapshot over a channel),
//! - with `[sync]`, child SAs other nodes published (`sync.rs`), installed
//!   into the same SA database; our own events are handed to the bus
//!   without waiting,
//! - SIGTERM / SIGINT.
//!
//! After every input the loop drains [`Endpoint::poll_transmit`] and
//! [`Endpoint::poll_event`]; events go to the SA database ([`Sad`]) and the
//! log.

use crate::config::{DaemonConfig, Initiation};
use crate::status::{
    counter_status, error_json, ok_json, DriverCounters, NodeStatus, Request, Status,
    MAX_REQUEST_LEN,
};
use anyhub_dataplane::{Change, Sad, SadConfig};
use anyhub_ike::{ts, Endpoint, Event, IkeSaHandle, Transmit};
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UdpSocket, UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

/// Large enough for any UDP datagram.
const RECV_BUF_LEN: usize = 65_535;
/// RFC 3948 §2.2: on the NAT-T port, four zero octets in front of an IKE
/// message tell it apart from ESP (whose SPI is never zero).
const NON_ESP_MARKER: [u8; 4] = [0; 4];
/// RFC 3948 §2.3: a NAT-keepalive is one octet, 0xff.
const NAT_KEEPALIVE: u8 = 0xff;
/// A status client gets this long to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the node could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot start the runtime: {0}")]
    Runtime(io::Error),
    #[error("cannot bind UDP {addr}: {error}")]
    Bind { addr: SocketAddr, error: io::Error },
    #[error("status socket {}: {message}", path.display())]
    StatusSocket { path: PathBuf, message: String },
    #[error("dataplane: {0}")]
    Dataplane(String),
    #[error("{0}")]
    Sync(String),
    #[error("cannot install the {signal} handler: {error}")]
    Signal {
        signal: &'static str,
        error: io::Error,
    },
}

/// Runs the node until SIGTERM/SIGINT, on a current-thread runtime.
pub fn run(config: DaemonConfig) -> Result<(), NodeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NodeError::Runtime)?;
    runtime.block_on(drive_node(config))
}

/// One UDP socket of the node.
struct Socket {
    socket: UdpSocket,
    local: SocketAddr,
    /// Bound to the NAT-T port: datagrams carry a marker or are ESP.
    natt: bool,
    /// Read by the dataplane workers (which pass IKE on): only sent on.
    dataplane: bool,
}

/// A status client's request, answered by the loop with the JSON to send.
type StatusRequest = (Request, oneshot::Sender<String>);

/// Everything the loop owns besides the receive buffer.
struct Node {
    name: String,
    index: u16,
    endpoint: Endpoint,
    /// Shared with the dataplane workers once they run (`Arc<Sad>`).
    sadb: std::sync::Arc<Sad>,
    sockets: Vec<Socket>,
    counters: DriverCounters,
    /// Reused for NAT-T sends (marker + payload).
    send_buf: Vec<u8>,
    /// Where `anyhubctl initiate` starts each tunnel that has a remote.
    targets: Vec<Initiation>,
    /// The ESP dataplane, when `[dataplane]` is configured.
    dataplane: Option<crate::dataplane::Running>,
    /// SA replication, when `[sync]` is configured.
    sync: Option<crate::sync::SyncBus>,
    /// IKE SAs (by SPIs) whose messages wait for a sync barrier: how many
    /// barriers are open and the messages in the order they were made.
    held: std::collections::HashMap<(u64, u64), Held>,
}

/// One IKE SA's messages held for its child SAs' barriers.
struct Held {
    /// The IKE SA here (its events are held too).
    handle: IkeSaHandle,
    open: usize,
    messages: Vec<Transmit>,
    /// Its SA database events, applied when the messages go: the new
    /// child SA must not carry our outbound traffic before the peer has
    /// the response that installs its inbound half.
    events: Vec<Event>,
}

/// The IKE SA an event is about (as the SA database sees it).
fn event_ike(event: &Event) -> IkeSaHandle {
    match event {
        Event::IkeSaEstablished(i) => i.handle,
        Event::IkeSaRekeyed { old, .. } => *old,
        Event::IkeSaMoved { handle, .. } | Event::IkeSaUpdated(handle) => *handle,
        Event::IkeSaDeleted { info, .. } | Event::IkeSaFailed { info, .. } => info.handle,
        Event::ChildSaEstablished(c) => c.ike,
        Event::ChildSaDeleted { ike, .. } | Event::ChildSaFailed { ike, .. } => *ike,
    }
}

/// The IKE SPIs of a message (RFC 7296 §3.1: the header starts with them).
fn ike_spis_of(payload: &[u8]) -> Option<(u64, u64)> {
    let i = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let r = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((i, r))
}

async fn drive_node(config: DaemonConfig) -> Result<(), NodeError> {
    let mut sockets = Vec::with_capacity(config.listen.len() * 2);
    // The NAT-T socket the dataplane serves (config: one listen address).
    let mut dp_socket: Option<(std::net::UdpSocket, SocketAddr)> = None;
    for &ip in &config.listen {
        for (port, natt) in [(config.port, false), (config.natt_port, true)] {
            let addr = SocketAddr::new(ip, port);
            let bind_err = |error| NodeError::Bind { addr, error };
            let dataplane = natt && config.dataplane.is_some();
            let socket = if dataplane {
                // A std socket: the workers get duplicates of it, the
                // loop one for sending (see dataplane.rs).
                let std = std::net::UdpSocket::bind(addr).map_err(bind_err)?;
                std.set_nonblocking(true).map_err(bind_err)?;
                let ours =
                    UdpSocket::from_std(std.try_clone().map_err(bind_err)?).map_err(bind_err)?;
                let local = std.local_addr().map_err(bind_err)?;
                dp_socket = Some((std, local));
                ours
            } else {
                UdpSocket::bind(addr).await.map_err(bind_err)?
            };
            let local = socket.local_addr().map_err(bind_err)?;
            sockets.push(Socket {
                socket,
                local,
                natt,
                dataplane,
            });
        }
    }
    let signal_err = |signal| move |error| NodeError::Signal { signal, error };
    let mut sigterm = signal(SignalKind::terminate()).map_err(signal_err("SIGTERM"))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(signal_err("SIGINT"))?;
    let status = StatusSocket::bind(&config.status_socket)?;

    let rng = Box::new(anyhub_crypto::SystemRng);
    let mut sad_config = SadConfig::new(config.node_index);
    if let Some(d) = &config.dataplane {
        sad_config.replay_window = d.replay_window;
    }
    let sadb = std::sync::Arc::new(Sad::new(sad_config));
    let (ike_tx, ike_rx) = mpsc::channel(crate::dataplane::IKE_QUEUE);
    let mut ike_rx = Some(ike_rx);
    let dataplane = match (&config.dataplane, dp_socket) {
        (Some(d), Some((sock, local))) => {
            let running = crate::dataplane::start(
                d,
                sadb.clone(),
                &config.endpoint.tunnels,
                &sock,
                local,
                ike_tx,
            )
            .map_err(NodeError::Dataplane)?;
            tracing::info!(
                tun = %running.tun,
                natt = %local,
                queues = d.queues,
                routes = %running.routes.join(","),
                "dataplane running"
            );
            Some(running)
        }
        _ => {
            ike_rx = None;
            None
        }
    };
    // Sync installs other nodes' child SAs itself; the loop then only
    // recomputes routes (coalesced).
    let routes_changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut sync = match &config.sync {
        Some(s) => Some(
            crate::sync::start(
                s,
                &config.node_name,
                config.node_index,
                sadb.clone(),
                routes_changed.clone(),
            )
            .map_err(NodeError::Sync)?,
        ),
        None => None,
    };
    let mut barrier_rx = sync.as_mut().and_then(crate::sync::SyncBus::take_barriers);
    let mut owners_rx = sync.as_mut().and_then(crate::sync::SyncBus::take_owners);
    let mut node = Node {
        sync,
        held: std::collections::HashMap::new(),
        name: config.node_name,
        index: config.node_index,
        endpoint: Endpoint::new(config.endpoint, rng),
        sadb,
        sockets,
        counters: DriverCounters::default(),
        send_buf: Vec::with_capacity(RECV_BUF_LEN),
        targets: config.targets.clone(),
        dataplane,
    };
    tracing::info!(
        node = %node.name,
        index = node.index,
        listen = ?node.sockets.iter().map(|s| s.local).collect::<Vec<_>>(),
        tunnels = node.endpoint.config().tunnels.len(),
        status_socket = %status.path.display(),
        "anyhubd started"
    );
    node.initiate(&config.initiate).await;

    let (request_tx, mut request_rx) = mpsc::channel::<StatusRequest>(16);
    let mut seq_tick = tokio::time::interval(crate::seq::TICK);
    seq_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; RECV_BUF_LEN];
    // Which socket to poll first: rotated so a busy socket cannot starve
    // the others.
    let mut first = 0;
    loop {
        let deadline = node.endpoint.poll_timeout();
        // Only awaited when there is a deadline (the `if` below).
        let wake = tokio::time::Instant::from_std(deadline.unwrap_or_else(Instant::now));
        tokio::select! {
            (i, res) = recv_any(&node.sockets, &mut buf, first) => {
                first = i + 1;
                match res {
                    Ok((len, from)) => node.handle_datagram(i, from, &buf[..len]),
                    // Linux reports ICMP errors on UDP sockets this way; the
                    // endpoint's retransmission timers cover the loss.
                    Err(e) => tracing::debug!(local = %node.sockets[i].local, error = %e, "UDP receive failed"),
                }
            }
            Some((local, from, message)) = async {
                match &mut ike_rx {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                node.adopt_if_ours(&message);
                node.endpoint.handle(Instant::now(), local, from, &message);
            }
            () = routes_changed.notified() => node.refresh_routes(),
            Some((spi_i, spi_r, owner)) = async {
                match &mut owners_rx {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => node.release_to(spi_i, spi_r, owner),
            _ = seq_tick.tick(), if node.sync.is_some() => {
                if let Some(s) = &mut node.sync {
                    s.seq_tick(&node.sadb);
                }
            }
            Some(done) = async {
                match &mut barrier_rx {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                node.barrier_done(done).await;
            }
            () = tokio::time::sleep_until(wake), if deadline.is_some() => {
                node.endpoint.handle_timeout(Instant::now());
            }
            accepted = status.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_status_client(stream, request_tx.clone()));
                }
                Err(e) => tracing::warn!(error = %e, "status socket accept failed"),
            },
            Some((request, reply)) = request_rx.recv() => {
                let answer = node.handle_request(Instant::now(), request);
                // The client may have given up meanwhile: nothing to do then.
                let _ = reply.send(answer);
            }
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: shutting down");
                break;
            }
            _ = sigint.recv() => {
                tracing::info!("SIGINT: shutting down");
                break;
            }
        }
        node.drive_output().await;
    }
    drop(status);
    if let Some(s) = &node.sync {
        s.close();
    }
    // Stops the workers; the TUN goes with its last fd.
    drop(node.dataplane.take());
    Ok(())
}

/// Receives one datagram from whichever socket has one, into `buf`:
/// (socket index, (length, sender)). Polls every socket, starting at
/// `first`, so all of them have a waker registered.
async fn recv_any(
    sockets: &[Socket],
    buf: &mut [u8],
    first: usize,
) -> (usize, io::Result<(usize, SocketAddr)>) {
    let n = sockets.len();
    poll_fn(|cx| {
        for k in 0..n {
            let i = (first + k) % n;
            if sockets[i].dataplane {
                continue;
            }
            let mut rb = tokio::io::ReadBuf::new(buf);
            match sockets[i].socket.poll_recv_from(cx, &mut rb) {
                Poll::Ready(Ok(from)) => return Poll::Ready((i, Ok((rb.filled().len(), from)))),
                Poll::Ready(Err(e)) => return Poll::Ready((i, Err(e))),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

/// What arrived on a NAT-T socket (RFC 3948 §2.2, §2.3).
#[derive(Debug, PartialEq, Eq)]
enum NattDatagram<'a> {
    Keepalive,
    /// An IKE message, marker removed.
    Ike(&'a [u8]),
    Esp,
}

fn classify_natt(data: &[u8]) -> NattDatagram<'_> {
    match data {
        [NAT_KEEPALIVE] => NattDatagram::Keepalive,
        [m0, m1, m2, m3, ike @ ..] if [*m0, *m1, *m2, *m3] == NON_ESP_MARKER => {
            NattDatagram::Ike(ike)
        }
        _ => NattDatagram::Esp,
    }
}

impl Node {
    /// Starts the tunnels marked `initiate = true`.
    async fn initiate(&mut self, initiations: &[Initiation]) {
        let now = Instant::now();
        for i in initiations {
            match self.endpoint.initiate(now, &i.tunnel, i.local, i.remote) {
                Ok(handle) => tracing::info!(
                    tunnel = %i.tunnel, local = %i.local, remote = %i.remote, handle = handle.0,
                    "initiating"
                ),
                Err(e) => tracing::error!(tunnel = %i.tunnel, error = %e, "cannot initiate"),
            }
        }
        self.drive_output().await;
    }

    fn handle_datagram(&mut self, socket: usize, from: SocketAddr, data: &[u8]) {
        let s = &self.sockets[socket];
        let local = s.local;
        let ike = if s.natt {
            match classify_natt(data) {
                NattDatagram::Keepalive => {
                    self.counters.rx_keepalives += 1;
                    return;
                }
                NattDatagram::Esp => {
                    // No [dataplane] configured: counted and dropped.
                    self.counters.rx_esp += 1;
                    return;
                }
                NattDatagram::Ike(ike) => ike,
            }
        } else {
            data
        };
        self.adopt_if_ours(ike);
        self.endpoint.handle(Instant::now(), local, from, ike);
    }

    /// An IKE message for an IKE SA another node owned (its takeover
    /// record is here, we do not hold the SA): anycast moved the peer to
    /// us, so we adopt it before the endpoint sees the message (docs/sa-sync.md,
    /// "IKE SA takeover state"). The replicated child SAs move under it.
    fn adopt_if_ours(&mut self, message: &[u8]) {
        let Some(sync) = &mut self.sync else { return };
        let Some((spi_i, spi_r)) = ike_spis_of(message) else {
            return;
        };
        if spi_r == 0 || !sync.has_ike_state(spi_i, spi_r) {
            return;
        }
        if self.endpoint.ike_sa_by_spis(spi_i, spi_r).is_some() {
            return;
        }
        let Some(state) = sync.take_ike_state(spi_i, spi_r) else {
            return;
        };
        match self.endpoint.adopt_ike_sa(Instant::now(), &state) {
            Ok(handle) => {
                sync.ike_adopted += 1;
                let moved = self
                    .sadb
                    .move_ike_sa(anyhub_sa_sync::convert::remote_handle(spi_i, spi_r), handle);
                tracing::info!(
                    tunnel = %state.tunnel,
                    spi_i = %format_args!("{spi_i:016x}"),
                    spi_r = %format_args!("{spi_r:016x}"),
                    child_sas = moved,
                    "IKE SA taken over from another node"
                );
            }
            Err(error) => {
                sync.ike_adopt_refused += 1;
                tracing::warn!(%error, spi_i = %format_args!("{spi_i:016x}"), "IKE SA record not adopted");
            }
        }
    }

    /// Node `owner` published our IKE SA as its own: it took it over, so
    /// we forget ours silently (no DELETE: the tunnel lives on there).
    fn release_to(&mut self, spi_i: u64, spi_r: u64, owner: u32) {
        let Some(handle) = self.endpoint.ike_sa_by_spis(spi_i, spi_r) else {
            return;
        };
        if self.endpoint.release_ike_sa(handle) {
            let moved = self
                .sadb
                .move_ike_sa(handle, anyhub_sa_sync::convert::remote_handle(spi_i, spi_r));
            if let Some(s) = &mut self.sync {
                s.ike_released += 1;
            }
            tracing::info!(
                spi_i = %format_args!("{spi_i:016x}"),
                spi_r = %format_args!("{spi_r:016x}"),
                owner,
                child_sas = moved,
                "IKE SA taken over by another node; released here"
            );
        }
    }

    /// Sends everything the endpoint queued and applies its events.
    async fn drive_output(&mut self) {
        // Events first: a child SA that waits for a sync barrier holds its
        // IKE SA's messages made in the same step (the response that lets
        // the peer use it), and the local SA database has it before any
        // message leaves.
        let mut changed = false;
        while let Some(event) = self.endpoint.poll_event() {
            log_event(&event);
            if let Some(s) = &mut self.sync {
                if let Some(ike) = s.publish(&event, &self.endpoint) {
                    let handle = event_ike(&event);
                    self.held
                        .entry(ike)
                        .or_insert_with(|| Held {
                            handle,
                            open: 0,
                            messages: Vec::new(),
                            events: Vec::new(),
                        })
                        .open += 1;
                }
                if let Event::IkeSaUpdated(handle) = &event {
                    if let Some(state) = self.endpoint.export_ike_sa(Instant::now(), *handle) {
                        s.publish_ike(&state);
                    }
                }
            }
            let handle = event_ike(&event);
            if let Some(h) = self.held.values_mut().find(|h| h.handle == handle) {
                h.events.push(event);
                continue;
            }
            changed |= self.apply_event(event);
        }
        if changed {
            self.refresh_routes();
        }
        while let Some(t) = self.endpoint.poll_transmit() {
            if !self.held.is_empty() {
                if let Some(h) = ike_spis_of(&t.payload).and_then(|k| self.held.get_mut(&k)) {
                    h.messages.push(t);
                    continue;
                }
            }
            self.send(&t).await;
        }
    }

    /// One local event into the SA database; whether routes changed.
    fn apply_event(&mut self, event: Event) -> bool {
        match self.sadb.handle_event(Instant::now(), event) {
            Change::Refused { spi_in, error } => {
                tracing::warn!(spi_in = %format_args!("{spi_in:08x}"), %error, "child SA not installed in the dataplane");
                false
            }
            Change::None => false,
            _ => true,
        }
    }

    /// A barrier ended: once its IKE SA has no other open barrier, its
    /// held events reach the SA database and its held messages go out,
    /// in order.
    async fn barrier_done(&mut self, done: crate::sync::BarrierDone) {
        if let Some(s) = &mut self.sync {
            s.note_barrier(&done);
        }
        let outcome = match done.outcome {
            Some(o) => format!("{o:?}"),
            None => "failed".into(),
        };
        tracing::info!(
            spi_in = %format_args!("{:08x}", done.spi_in),
            outcome,
            acked = ?done.acked,
            elapsed_ms = done.elapsed_ms,
            "sync barrier"
        );
        let Some(h) = self.held.get_mut(&done.ike) else {
            return;
        };
        h.open = h.open.saturating_sub(1);
        if h.open > 0 {
            return;
        }
        let Some(Held {
            messages, events, ..
        }) = self.held.remove(&done.ike)
        else {
            return;
        };
        let mut changed = false;
        for event in events {
            changed |= self.apply_event(event);
        }
        if changed {
            self.refresh_routes();
        }
        if let Some(s) = &mut self.sync {
            s.held_messages += messages.len() as u64;
        }
        for t in &messages {
            self.send(t).await;
        }
    }

    /// The dataplane follows the SA database's routes after a change.
    fn refresh_routes(&self) {
        if let Some(d) = &self.dataplane {
            let routes = d.dp.refresh();
            tracing::debug!(
                routes = %routes.tunnels.iter().map(|(p, t)| format!("{p}->{t}")).collect::<Vec<_>>().join(","),
                skipped = routes.skipped,
                "dataplane routes"
            );
        }
    }

    async fn send(&mut self, t: &Transmit) {
        let Some(s) = self.sockets.iter().find(|s| s.local == t.local) else {
            self.counters.tx_unroutable += 1;
            tracing::warn!(local = %t.local, remote = %t.remote, "no socket for a transmit's local address; dropped");
            return;
        };
        let datagram = if t.natt {
            self.send_buf.clear();
            self.send_buf.extend_from_slice(&NON_ESP_MARKER);
            self.send_buf.extend_from_slice(&t.payload);
            &self.send_buf[..]
        } else {
            &t.payload[..]
        };
        // Awaited, not `try_send_to`: a freshly bound tokio socket reports
        // WouldBlock until the reactor has seen it writable, which would drop
        // the first IKE_SA_INIT. A UDP send waits at most for socket buffer
        // space; a failure is packet loss, which retransmissions cover.
        if let Err(e) = s.socket.send_to(datagram, t.remote).await {
            self.counters.tx_errors += 1;
            tracing::warn!(local = %t.local, remote = %t.remote, error = %e, "send failed");
        }
    }

    /// An operator's request: the JSON answer.
    fn handle_request(&mut self, now: Instant, request: Request) -> String {
        let (tunnel, what) = match &request {
            Request::Status => return self.status(now).to_json(),
            Request::Initiate { tunnel } => {
                let Some(t) = self.targets.iter().find(|t| &*t.tunnel == tunnel) else {
                    return error_json(&format!(
                        "no tunnel '{tunnel}' with a remote_address this node can initiate to"
                    ));
                };
                return match self.endpoint.initiate(now, tunnel, t.local, t.remote) {
                    Ok(h) => {
                        tracing::info!(tunnel = %tunnel, remote = %t.remote, handle = h.0, "initiating (operator)");
                        ok_json(&format!("initiating {tunnel} to {}", t.remote))
                    }
                    Err(e) => error_json(&e.to_string()),
                };
            }
            Request::Rekey { tunnel, ike } => (tunnel, (true, *ike)),
            Request::Terminate { tunnel, ike } => (tunnel, (false, *ike)),
        };
        if self.endpoint.config().tunnel(tunnel).is_none() {
            return error_json(&format!("no tunnel '{tunnel}'"));
        }
        let sas: Vec<_> = self
            .endpoint
            .ike_sas()
            .into_iter()
            .filter(|s| s.state == anyhub_ike::IkeState::Established)
            .filter(|s| s.tunnel.as_deref() == Some(tunnel.as_str()))
            .map(|s| s.handle)
            .collect();
        let mut n = 0;
        for h in sas {
            match what {
                (true, true) => n += usize::from(self.endpoint.rekey_ike_sa(now, h)),
                (false, true) => n += usize::from(self.endpoint.delete_ike_sa(now, h)),
                (rekey, false) => {
                    for spi in self.endpoint.child_sas_of(h) {
                        let done = if rekey {
                            self.endpoint.rekey_child_sa(now, h, spi)
                        } else {
                            self.endpoint.delete_child_sa(now, h, spi)
                        };
                        n += usize::from(done);
                    }
                }
            }
        }
        let verb = if what.0 { "rekeying" } else { "deleting" };
        let noun = if what.1 { "IKE SA" } else { "child SA" };
        if n == 0 {
            return error_json(&format!(
                "tunnel '{tunnel}' has no established {noun} to act on"
            ));
        }
        tracing::info!(tunnel = %tunnel, count = n, "{verb} {noun}(s) (operator)");
        ok_json(&format!("{verb} {n} {noun}(s) of {tunnel}"))
    }

    fn status(&self, now: Instant) -> Status {
        let children = self.sadb.list();
        let mut st = Status::snapshot(
            NodeStatus {
                index: self.index,
                name: self.name.clone(),
            },
            now,
            &self.endpoint.ike_sas(),
            &children,
            {
                let mut c = counter_status(self.endpoint.counters(), &self.counters);
                // A gauge among the counters: what a flood is holding now.
                c.insert("half_open".into(), self.endpoint.half_open_count() as u64);
                if let Some(d) = &self.dataplane {
                    dataplane_counters(d, &mut c);
                }
                c
            },
        );
        // Same order as `children`.
        for (cs, sa) in st.child_sas.iter_mut().zip(&children) {
            if let Some((rx, tx)) = self.sadb.sa_counters(sa.spi_in) {
                cs.in_packets = rx.packets;
                cs.in_bytes = rx.bytes;
                cs.out_packets = tx.packets;
                cs.out_bytes = tx.bytes;
                for (r, n) in rx.drops.iter().chain(&tx.drops) {
                    *cs.drops.entry(r.name().to_string()).or_default() += n;
                }
            }
        }
        st.sync = self.sync.as_ref().map(crate::sync::SyncBus::status_json);
        if let Some(g) = self.dataplane.as_ref().and_then(|d| d.gre.as_ref()) {
            st.gre_tunnels = g
                .iter()
                .map(|(id, cfg, c)| crate::status::GreTunnelStatus {
                    id: id.to_string(),
                    local: cfg.local.to_string(),
                    remote: cfg.remote.to_string(),
                    key: cfg.key,
                    in_packets: c.rx.packets(),
                    in_bytes: c.rx.bytes(),
                    out_packets: c.tx.packets(),
                    out_bytes: c.tx.bytes(),
                    keepalives: c.keepalives.load(std::sync::atomic::Ordering::Relaxed),
                    drops: c
                        .drops
                        .nonzero()
                        .into_iter()
                        .map(|(r, n)| (r.name().to_string(), n))
                        .collect(),
                })
                .collect();
            for (r, n) in g.drops.nonzero() {
                *st.counters
                    .entry(format!("gre_drop_{}", r.name()))
                    .or_default() += n;
            }
        }
        st
    }
}

/// The dataplane's own counters (`dp_…`), its workers' I/O counters and
/// the drops no SA can be blamed for (`dp_drop_<reason>`).
fn dataplane_counters(d: &crate::dataplane::Running, c: &mut crate::status::CounterStatus) {
    use std::sync::atomic::Ordering::Relaxed;
    let k = &d.dp.counters;
    for (name, v) in [
        ("dp_ike_to_driver", &k.ike_to_driver),
        ("dp_to_local", &k.to_local),
        ("dp_tunnel_to_tunnel", &k.tunnel_to_tunnel),
        ("dp_icmp_errors", &k.icmp_errors),
        ("dp_mss_clamped", &k.mss_clamped),
    ] {
        c.insert(name.into(), v.load(Relaxed));
    }
    if let Some(io) = d.io() {
        for (name, v) in [
            ("dp_udp_rx", &io.udp_rx),
            ("dp_udp_tx", &io.udp_tx),
            ("dp_tun_reads", &io.tun_reads),
            ("dp_tun_tx_packets", &io.tun_tx_packets),
            ("dp_io_errors", &io.errors),
        ] {
            c.insert(name.into(), v.load(Relaxed));
        }
    }
    if let Some(raw) = &d.raw_esp {
        c.insert("dp_raw_esp_rx".into(), raw.rx_packets.load(Relaxed));
        c.insert("dp_raw_esp_tx".into(), raw.tx_packets.load(Relaxed));
        for (r, n) in raw.drops.nonzero() {
            *c.entry(format!("dp_drop_raw_{}", r.name())).or_default() += n;
        }
    }
    let snap = d.dp.sad().snapshot();
    for (r, n) in k
        .drops
        .nonzero()
        .into_iter()
        .chain(snap.node_drops().nonzero())
    {
        *c.entry(format!("dp_drop_{}", r.name())).or_default() += n;
    }
}

/// One line per event, at info: tunnel, SPIs, algorithms. Never keys (the
/// `ChildSa` is not printed as a whole, and its `Debug` is redacted anyway).
fn log_event(event: &Event) {
    let tunnel = |t: &Option<std::sync::Arc<str>>| t.as_deref().unwrap_or("-").to_owned();
    match event {
        Event::IkeSaEstablished(info) => tracing::info!(
            tunnel = %tunnel(&info.tunnel),
            spi_i = %format_args!("{:016x}", info.spi_i),
            spi_r = %format_args!("{:016x}", info.spi_r),
            initiator = info.initiator,
            local = %info.local,
            remote = %info.remote,
            remote_id = %info.remote_id.as_ref().map(ToString::to_string).unwrap_or_default(),
            proposal = info.proposal.as_deref().unwrap_or("-"),
            "IKE SA established"
        ),
        Event::IkeSaDeleted { info, reason } => tracing::info!(
            tunnel = %tunnel(&info.tunnel),
            spi_i = %format_args!("{:016x}", info.spi_i),
            spi_r = %format_args!("{:016x}", info.spi_r),
            remote = %info.remote,
            ?reason,
            "IKE SA deleted"
        ),
        Event::IkeSaFailed { info, reason } => tracing::info!(
            tunnel = %tunnel(&info.tunnel),
            spi_i = %format_args!("{:016x}", info.spi_i),
            spi_r = %format_args!("{:016x}", info.spi_r),
            remote = %info.remote,
            ?reason,
            "IKE SA failed"
        ),
        Event::ChildSaEstablished(c) => tracing::info!(
            tunnel = %c.tunnel,
            spi_in = %format_args!("{:08x}", c.spi_in),
            spi_out = %format_args!("{:08x}", c.spi_out),
            proposal = %c.proposal,
            local_ts = %c.local_ts.iter().map(ts::display).collect::<Vec<_>>().join(","),
            remote_ts = %c.remote_ts.iter().map(ts::display).collect::<Vec<_>>().join(","),
            encap = c.encap,
            rekey_of = %c.rekey_of.map(|o| format!("{o:08x}")).unwrap_or_else(|| "-".into()),
            "child SA established"
        ),
        Event::IkeSaMoved {
            handle,
            local,
            remote,
        } => tracing::info!(
            handle = handle.0,
            local = %local,
            remote = %remote,
            "peer moved (NAT mapping changed)"
        ),
        Event::IkeSaRekeyed { old, new } => tracing::info!(
            tunnel = %tunnel(&new.tunnel),
            spi_i = %format_args!("{:016x}", new.spi_i),
            spi_r = %format_args!("{:016x}", new.spi_r),
            old = old.0,
            proposal = new.proposal.as_deref().unwrap_or("-"),
            "IKE SA rekeyed"
        ),
        Event::ChildSaDeleted {
            tunnel,
            spi_in,
            spi_out,
            ..
        } => tracing::info!(
            tunnel = %tunnel,
            spi_in = %format_args!("{spi_in:08x}"),
            spi_out = %format_args!("{spi_out:08x}"),
            "child SA deleted"
        ),
        Event::ChildSaFailed { tunnel, reason, .. } => tracing::info!(
            tunnel = %tunnel,
            ?reason,
            "child SA failed"
        ),
        // After every exchange: far too often for info.
        Event::IkeSaUpdated(handle) => {
            tracing::debug!(handle = handle.0, "IKE SA takeover state changed")
        }
    }
}

/// The status socket; removes its file when dropped.
#[derive(Debug)]
struct StatusSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl StatusSocket {
    /// Binds `path` (mode 0600), creating its directory (0700) if needed and
    /// replacing a stale socket file — but not a live one (another anyhubd)
    /// nor anything that is not a socket.
    fn bind(path: &Path) -> Result<StatusSocket, NodeError> {
        let err = |message: String| NodeError::StatusSocket {
            path: path.to_owned(),
            message,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(err("another anyhubd is listening on it".into()));
                }
                std::fs::remove_file(path)
                    .map_err(|e| err(format!("cannot remove the stale socket: {e}")))?;
                tracing::info!(path = %path.display(), "removed a stale status socket");
            }
            Ok(_) => return Err(err("exists and is not a socket".into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e.to_string())),
        }
        let listener = UnixListener::bind(path).map_err(|e| err(format!("cannot bind: {e}")))?;
        let socket = StatusSocket {
            listener,
            path: path.to_owned(),
        };
        // From here on the file is removed on every exit path (Drop).
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| err(format!("cannot chmod 0600: {e}")))?;
        Ok(socket)
    }
}

impl Drop for StatusSocket {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the status socket");
        }
    }
}

/// Reads one request line, asks the loop for the answer, writes it, closes.
async fn serve_status_client(stream: UnixStream, requests: mpsc::Sender<StatusRequest>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST_LEN));
    match tokio::time::timeout(CLIENT_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "status client: read failed");
            return;
        }
        Err(_) => {
            tracing::debug!("status client: no request in time");
            return;
        }
    }
    let answer = match Request::parse(&line) {
        Ok(request) => {
            let (tx, rx) = oneshot::channel();
            if requests.send((request, tx)).await.is_err() {
                return;
            }
            match rx.await {
                Ok(json) => json,
                Err(_) => return,
            }
        }
        Err(message) => error_json(&message),
    };
    let written = tokio::time::timeout(CLIENT_TIMEOUT, async {
        write.write_all(answer.as_bytes()).await?;
        write.write_all(b"\n").await?;
        write.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::debug!("status client: write failed or timed out");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natt_demultiplexing() {
        assert_eq!(classify_natt(&[0xff]), NattDatagram::Keepalive);
        let ike = [0, 0, 0, 0, 0x01, 0x02, 0x03];
        assert_eq!(classify_natt(&ike), NattDatagram::Ike(&[1, 2, 3]));
        assert_eq!(classify_natt(&[0, 0, 0, 0]), NattDatagram::Ike(&[]));
        // ESP: a non-zero SPI first.
        assert_eq!(
            classify_natt(&[0xc0, 0x01, 0x23, 0x45, 0, 0, 0, 1]),
            NattDatagram::Esp
        );
        assert_eq!(classify_natt(&[0, 0, 0, 1, 0]), NattDatagram::Esp);
        assert_eq!(classify_natt(&[0xfe]), NattDatagram::Esp);
        assert_eq!(classify_natt(&[]), NattDatagram::Esp);
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("anyhub-node-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn status_socket_lifecycle() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = temp_dir("lifecycle");
            let path = dir.join("sub/anyhubd.sock");
            let s = StatusSocket::bind(&path).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            // A live socket is not stolen.
            assert!(StatusSocket::bind(&path)
                .unwrap_err()
                .to_string()
                .contains("another anyhubd"));
            // A stale one (nobody listening) is replaced.
            let listener = std::os::unix::net::UnixListener::bind(dir.join("stale.sock")).unwrap();
            drop(listener);
            let stale = StatusSocket::bind(&dir.join("stale.sock")).unwrap();
            drop(stale);
            assert!(!dir.join("stale.sock").exists());
            // A regular file is left alone.
            std::fs::write(dir.join("file"), b"x").unwrap();
            assert!(StatusSocket::bind(&dir.join("file"))
                .unwrap_err()
                .to_string()
                .contains("not a socket"));
            drop(s);
            assert!(!path.exists(), "removed on drop");
            std::fs::remove_dir_all(&dir).unwrap();
        });
    }
}
