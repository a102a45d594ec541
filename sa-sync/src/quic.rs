//! The thin QUIC driver around [`Node`]: quinn, mutual TLS against the
//! fleet CA, one connection per pair of nodes (the lower index dials; in
//! fan-out mode a leaf dials its relays, a relay the higher relays), one
//! bidirectional stream per connection carrying length-prefixed frames.
//!
//! ```text
//!  dial/accept ─► TLS 1.3, both certificates chain to the fleet CA
//!              ─► stream: Hello ↔ Hello; the peer's certificate must name
//!                 node-<Hello.node>.anyhub (else closed, nothing sent)
//!              ─► actor: Node::connected → frames ⇄ Node::handle_bytes
//! ```
//!
//! One task (the actor) owns the [`Node`]; connections only move bytes.
//! Nothing is sent to a peer before its certificate and Hello are checked.

use crate::core::{Barrier, BarrierId, Config, Event, Node, PeerId, PublishError, Status};
use crate::fleet::node_dns_name;
use crate::key::Key;
use crate::pb::{self, record::Body};
use prost::Message;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// Frames larger than this close the connection (a peer-controlled length).
pub const MAX_FRAME: usize = 64 << 20;

/// The wall clock in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("{0}: {1}")]
    Pem(String, String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("QUIC: {0}")]
    Quic(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("publish: {0}")]
    Publish(#[from] PublishError),
    #[error("the bus stopped")]
    Stopped,
}

/// Our certificate chain and key, and the fleet CA. The key is never
/// printed (rustls' key types redact their `Debug`).
#[derive(Debug)]
pub struct Identity {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Identity, BusError> {
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| BusError::Pem("CA".into(), e.to_string()))?;
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BusError::Pem("certificate".into(), e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|_| BusError::Pem("key".into(), "unreadable".into()))?;
        Ok(Identity { ca, chain, key })
    }

    /// `ca.pem` and `<name>.pem` / `<name>.key` from a fleet directory.
    pub fn load(dir: &Path, name: &str) -> Result<Identity, BusError> {
        let read = |f: String| {
            std::fs::read_to_string(dir.join(&f))
                .map(zeroize::Zeroizing::new)
                .map_err(|e| BusError::Pem(dir.join(f).display().to_string(), e.to_string()))
        };
        let ca = read("ca.pem".into())?;
        let cert = read(format!("{name}.pem"))?;
        let key = read(format!("{name}.key"))?;
        Identity::from_pem(&ca, &cert, &key)
    }
}

/// How one node joins the bus.
pub struct BusConfig {
    pub core: Config,
    pub name: String,
    pub listen: SocketAddr,
    /// Every other fleet member and where it listens.
    pub peers: Vec<(PeerId, SocketAddr)>,
    pub identity: Identity,
    /// A peer silent this long is gone (kill -9 detection).
    pub idle_timeout: Duration,
}

type Reply<T> = oneshot::Sender<T>;

enum Cmd {
    Publish {
        key: Key,
        body: Body,
        expires_ms: u64,
        reply: Reply<Result<pb::Version, PublishError>>,
    },
    Barrier {
        key: Key,
        body: Body,
        expires_ms: u64,
        wait: crate::core::WaitFor,
        timeout_ms: u64,
        reply: Reply<Result<Barrier, PublishError>>,
    },
    Delete {
        key: Key,
        reply: Reply<Result<pb::Version, PublishError>>,
    },
    DeleteChildrenOf {
        spi_i: u64,
        spi_r: u64,
        reply: Reply<usize>,
    },
    ReparentChildren {
        old: (u64, u64),
        new: (u64, u64),
        reply: Reply<usize>,
    },
    Status(Reply<Status>),
    Holds(Vec<Key>, Reply<Vec<bool>>),
    Bootstrapped,
}

enum Net {
    Up {
        peer: PeerId,
        id: u64,
        tx: mpsc::UnboundedSender<Vec<u8>>,
    },
    Frame {
        peer: PeerId,
        id: u64,
        bytes: Vec<u8>,
    },
    Down {
        peer: PeerId,
        id: u64,
    },
}

/// A running bus: a handle to the actor that owns the [`Node`].
#[derive(Clone)]
pub struct Bus {
    cmd: mpsc::UnboundedSender<Cmd>,
    local: SocketAddr,
    endpoint: quinn::Endpoint,
}

fn tls_configs(
    id: &Identity,
    idle: Duration,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), BusError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(id.ca.clone())?;
    let roots = Arc::new(roots);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(id.chain.clone(), id.key.clone_key())?;
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(idle / 4));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle).map_err(|e| BusError::Quic(e.to_string()))?,
    ));
    let transport = Arc::new(transport);
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server)
            .map_err(|e| BusError::Quic(e.to_string()))?,
    ));
    sc.transport_config(transport.clone());
    let mut cc = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client)
            .map_err(|e| BusError::Quic(e.to_string()))?,
    ));
    cc.transport_config(transport);
    Ok((sc, cc))
}

/// The QUIC endpoint (server and client) for an identity: also what tests
/// use to play a foreign node.
pub fn endpoint(
    id: &Identity,
    listen: SocketAddr,
    idle: Duration,
) -> Result<quinn::Endpoint, BusError> {
    let (sc, cc) = tls_configs(id, idle)?;
    let mut ep = quinn::Endpoint::server(sc, listen)?;
    ep.set_default_client_config(cc);
    Ok(ep)
}

/// Whether `conn`'s peer certificate names node `index`.
fn cert_names(conn: &quinn::Connection, index: u16) -> bool {
    let Some(certs) = conn
        .peer_identity()
        .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok())
    else {
        return false;
    };
    let Some(leaf) = certs.first() else {
        return false;
    };
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(leaf) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(node_dns_name(index)) else {
        return false;
    };
    rustls::client::verify_server_name(&parsed, &name).is_ok()
}

/// A length-prefixed frame.
pub async fn write_frame(s: &mut quinn::SendStream, bytes: &[u8]) -> Result<(), BusError> {
    let len = (bytes.len() as u32).to_be_bytes();
    s.write_all(&len)
        .await
        .map_err(|e| BusError::Quic(e.to_string()))?;
    s.write_all(bytes)
        .await
        .map_err(|e| BusError::Quic(e.to_string()))
}

/// A frame already prefixed with its length (one write, one buffer).
fn prefixed(frame: &pb::Frame) -> Vec<u8> {
    let len = frame.encoded_len();
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    frame.encode(&mut buf).expect("capacity reserved");
    buf
}

pub async fn read_frame(r: &mut quinn::RecvStream) -> Result<Vec<u8>, BusError> {
    let mut len = [0; 4];
    r.read_exact(&mut len)
        .await
        .map_err(|e| BusError::Quic(e.to_string()))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(BusError::Quic(format!("frame of {len} bytes")));
    }
    let mut buf = vec![0; len];
    r.read_exact(&mut buf)
        .await
        .map_err(|e| BusError::Quic(e.to_string()))?;
    Ok(buf)
}

fn hello(node: u16, name: &str, incarnation: u64) -> Vec<u8> {
    pb::Frame {
        body: Some(pb::frame::Body::Hello(pb::Hello {
            protocol: pb::PROTOCOL,
            node: u32::from(node),
            name: name.to_string(),
            incarnation,
            relay: false,
        })),
    }
    .encode_to_vec()
}

fn parse_hello(bytes: &[u8]) -> Option<u16> {
    match pb::Frame::decode(bytes).ok()?.body? {
        pb::frame::Body::Hello(h) if h.protocol == pb::PROTOCOL => u16::try_from(h.node).ok(),
        _ => None,
    }
}

struct ConnCtx {
    me: u16,
    name: String,
    incarnation: u64,
    net: mpsc::UnboundedSender<Net>,
}

static CONN_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Runs one connection until it closes. `expect`: the peer we dialed.
async fn run_conn(ctx: Arc<ConnCtx>, conn: quinn::Connection, expect: Option<PeerId>) {
    let streams = if expect.is_some() {
        conn.open_bi().await
    } else {
        conn.accept_bi().await
    };
    let Ok((mut send, mut recv)) = streams else {
        return;
    };
    let ours = hello(ctx.me, &ctx.name, ctx.incarnation);
    // The dialer speaks first; the acceptor answers only a verified Hello.
    if expect.is_some() && write_frame(&mut send, &ours).await.is_err() {
        return;
    }
    let peer = match read_frame(&mut recv)
        .await
        .ok()
        .and_then(|b| parse_hello(&b))
    {
        Some(p) if p != ctx.me && expect.is_none_or(|e| e == p) && cert_names(&conn, p) => p,
        claimed => {
            tracing::warn!(remote = %conn.remote_address(), ?claimed, "refused: Hello does not match the certificate");
            conn.close(1u32.into(), b"identity");
            return;
        }
    };
    if expect.is_none() && write_frame(&mut send, &ours).await.is_err() {
        return;
    }
    let id = CONN_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    if ctx.net.send(Net::Up { peer, id, tx }).is_err() {
        return;
    }
    tracing::info!(peer, remote = %conn.remote_address(), "peer up");
    let writer = tokio::spawn(async move {
        // Frames come length-prefixed (`prefixed`): one write each.
        while let Some(bytes) = rx.recv().await {
            if send.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    while let Ok(bytes) = read_frame(&mut recv).await {
        if ctx.net.send(Net::Frame { peer, id, bytes }).is_err() {
            break;
        }
    }
    writer.abort();
    conn.close(0u32.into(), b"");
    tracing::info!(peer, "peer down");
    let _ = ctx.net.send(Net::Down { peer, id });
}

type Conns = HashMap<PeerId, (u64, mpsc::UnboundedSender<Vec<u8>>)>;
type Waiting = HashMap<BarrierId, Reply<Result<Barrier, PublishError>>>;

fn on_net(node: &mut Node, conns: &mut Conns, ev: Net) {
    let now = now_ms();
    match ev {
        Net::Up { peer, id, tx } => {
            if conns.insert(peer, (id, tx)).is_some() {
                node.disconnected(peer, now);
            }
            node.connected(peer, now);
        }
        Net::Frame { peer, id, bytes } => {
            if conns.get(&peer).is_some_and(|c| c.0 == id) {
                node.handle_bytes(peer, &bytes, now);
            }
        }
        Net::Down { peer, id } => {
            if conns.get(&peer).is_some_and(|c| c.0 == id) {
                conns.remove(&peer);
                node.disconnected(peer, now);
            }
        }
    }
}

fn on_cmd(node: &mut Node, waiting: &mut Waiting, cmd: Cmd) {
    let now = now_ms();
    match cmd {
        Cmd::Publish {
            key,
            body,
            expires_ms,
            reply,
        } => {
            let _ = reply.send(node.publish(key, body, expires_ms, now));
        }
        Cmd::Barrier {
            key,
            body,
            expires_ms,
            wait,
            timeout_ms,
            reply,
        } => match node.publish_with_barrier(key, body, expires_ms, wait, timeout_ms, now) {
            Ok((_, id)) => {
                waiting.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        },
        Cmd::Delete { key, reply } => {
            let _ = reply.send(node.delete(key, now));
        }
        Cmd::DeleteChildrenOf {
            spi_i,
            spi_r,
            reply,
        } => {
            let _ = reply.send(node.delete_children_of(spi_i, spi_r, now));
        }
        Cmd::ReparentChildren { old, new, reply } => {
            let _ = reply.send(node.reparent_children(old, new, now));
        }
        Cmd::Status(reply) => {
            let _ = reply.send(node.status());
        }
        Cmd::Holds(keys, reply) => {
            let held = keys
                .iter()
                .map(|k| node.table().get(k).is_some_and(|e| !e.is_tombstone()))
                .collect();
            let _ = reply.send(held);
        }
        Cmd::Bootstrapped => node.set_bootstrapped(),
    }
}

impl Bus {
    /// Starts the endpoint, the dialers (to every peer with a higher index)
    /// and the actor. `on_event` runs in the actor for every applied record,
    /// expiry and barrier (the dataplane installs from it).
    pub fn start(
        cfg: BusConfig,
        mut on_event: impl FnMut(&Event) + Send + 'static,
    ) -> Result<Bus, BusError> {
        let endpoint = endpoint(&cfg.identity, cfg.listen, cfg.idle_timeout)?;
        let local = endpoint.local_addr()?;
        let me = cfg.core.node;
        let (net_tx, mut net_rx) = mpsc::unbounded_channel();
        let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<Cmd>();
        let ctx = Arc::new(ConnCtx {
            me,
            name: cfg.name.clone(),
            incarnation: cfg.core.incarnation,
            net: net_tx,
        });
        // Accept.
        let ep = endpoint.clone();
        let actx = ctx.clone();
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let actx = actx.clone();
                tokio::spawn(async move {
                    match incoming.await {
                        Ok(conn) => run_conn(actx, conn, None).await,
                        Err(e) => tracing::warn!(error = %e, "handshake refused"),
                    }
                });
            }
        });
        // Whom we dial, forever. Full mesh: the higher indexes. Fan-out
        // mode: a leaf dials its relays; a relay the higher-indexed relays
        // (leaves dial it).
        let (relay, relays) = (cfg.core.relay, cfg.core.relays.clone());
        let dials = move |p: PeerId| {
            if relay {
                relays.contains(&p) && p > me
            } else if !relays.is_empty() {
                relays.contains(&p)
            } else {
                p > me
            }
        };
        for &(peer, addr) in cfg.peers.iter().filter(|(p, _)| dials(*p)) {
            let ep = endpoint.clone();
            let dctx = ctx.clone();
            tokio::spawn(async move {
                loop {
                    if let Ok(connecting) = ep.connect(addr, &node_dns_name(peer)) {
                        match connecting.await {
                            Ok(conn) => run_conn(dctx.clone(), conn, Some(peer)).await,
                            Err(e) => tracing::debug!(peer, error = %e, "dial failed"),
                        }
                    }
                    if dctx.net.is_closed() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        }
        // The actor.
        let mut node = Node::new(cfg.core);
        for &(p, _) in &cfg.peers {
            node.add_peer(p);
        }
        tokio::spawn(async move {
            let mut conns: Conns = HashMap::new();
            let mut waiting: Waiting = HashMap::new();
            loop {
                let sleep = node
                    .poll_timeout()
                    .map(|t| Duration::from_millis(t.saturating_sub(now_ms())))
                    .unwrap_or(Duration::from_secs(3600));
                tokio::select! {
                    ev = net_rx.recv() => {
                        let Some(ev) = ev else { break };
                        on_net(&mut node, &mut conns, ev);
                    }
                    cmd = cmd_rx.recv() => {
                        let Some(cmd) = cmd else { break };
                        on_cmd(&mut node, &mut waiting, cmd);
                    }
                    _ = tokio::time::sleep(sleep) => node.handle_timeout(now_ms()),
                }
                // Whatever else is ready before we send: under load, many
                // records leave in one batch (Node::poll_transmit).
                for _ in 0..256 {
                    match net_rx.try_recv() {
                        Ok(ev) => on_net(&mut node, &mut conns, ev),
                        Err(_) => break,
                    }
                }
                for _ in 0..256 {
                    match cmd_rx.try_recv() {
                        Ok(cmd) => on_cmd(&mut node, &mut waiting, cmd),
                        Err(_) => break,
                    }
                }
                // Events before frames: the callback has seen (and
                // anyhubd installed) every record before our
                // acknowledgement of it leaves, so a barrier means
                // "installed", not merely "received".
                while let Some(ev) = node.poll_event() {
                    on_event(&ev);
                    if let Event::Barrier(b) = ev {
                        if let Some(r) = waiting.remove(&b.id) {
                            let _ = r.send(Ok(b));
                        }
                    }
                }
                while let Some(tx) = node.poll_transmit() {
                    if let Some((_, c)) = conns.get(&tx.peer) {
                        let _ = c.send(prefixed(&tx.frame));
                    }
                }
            }
        });
        Ok(Bus {
            cmd: cmd_tx,
            local,
            endpoint,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, BusError> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(make(tx)).map_err(|_| BusError::Stopped)?;
        rx.await.map_err(|_| BusError::Stopped)
    }

    pub async fn publish(
        &self,
        key: Key,
        body: Body,
        expires_ms: u64,
    ) -> Result<pb::Version, BusError> {
        Ok(self
            .ask(|reply| Cmd::Publish {
                key,
                body,
                expires_ms,
                reply,
            })
            .await??)
    }

    /// Publishes and resolves when the barrier is reached or times out.
    pub async fn publish_with_barrier(
        &self,
        key: Key,
        body: Body,
        expires_ms: u64,
        wait: crate::core::WaitFor,
        timeout_ms: u64,
    ) -> Result<Barrier, BusError> {
        self.start_barrier(key, body, expires_ms, wait, timeout_ms)?
            .await
    }

    /// [`Bus::publish_with_barrier`] in two steps: the write reaches the
    /// bus now, in call order with every other write of this caller, and
    /// the returned future resolves at the barrier. A caller that must not
    /// wait (anyhubd's writer) keeps its order and awaits elsewhere.
    pub fn start_barrier(
        &self,
        key: Key,
        body: Body,
        expires_ms: u64,
        wait: crate::core::WaitFor,
        timeout_ms: u64,
    ) -> Result<
        impl std::future::Future<Output = Result<Barrier, BusError>> + Send + 'static,
        BusError,
    > {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Barrier {
                key,
                body,
                expires_ms,
                wait,
                timeout_ms,
                reply,
            })
            .map_err(|_| BusError::Stopped)?;
        Ok(async move { Ok(rx.await.map_err(|_| BusError::Stopped)??) })
    }

    pub async fn delete(&self, key: Key) -> Result<pb::Version, BusError> {
        Ok(self.ask(|reply| Cmd::Delete { key, reply }).await??)
    }

    /// Tombstones every child SA of an IKE SA; returns how many.
    pub async fn delete_children_of(&self, spi_i: u64, spi_r: u64) -> Result<usize, BusError> {
        self.ask(|reply| Cmd::DeleteChildrenOf {
            spi_i,
            spi_r,
            reply,
        })
        .await
    }

    /// [`crate::Node::reparent_children`]: an IKE SA rekey moved them.
    pub async fn reparent_children(
        &self,
        old: (u64, u64),
        new: (u64, u64),
    ) -> Result<usize, BusError> {
        self.ask(|reply| Cmd::ReparentChildren { old, new, reply })
            .await
    }

    pub async fn status(&self) -> Result<Status, BusError> {
        self.ask(Cmd::Status).await
    }

    /// Whether each key is live in our table.
    pub async fn holds(&self, keys: Vec<Key>) -> Result<Vec<bool>, BusError> {
        self.ask(|reply| Cmd::Holds(keys, reply)).await
    }

    /// The first node of a new fleet has nothing to take a snapshot of.
    pub fn set_bootstrapped(&self) {
        let _ = self.cmd.send(Cmd::Bootstrapped);
    }

    /// Closes every connection (peers see us go at once).
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"bye");
    }
}
