//! The IKE core past authentication. An initiator and a responder Endpoint
//! (seeded RNGs, PSK: every byte is reproducible) complete IKE_SA_INIT and
//! IKE_AUTH in memory; then the input is a program of actions:
//!
//! - inject a message the harness builds — a payload chain of exchange type
//!   CREATE_CHILD_SA, INFORMATIONAL, IKE_AUTH or any other, from templates
//!   (new child SA, child or IKE SA rekey, DELETE, liveness check) and/or
//!   arbitrary payloads — encrypted with the IKE SA's real keys
//!   (`anyhub_ike::fuzzing::seal_from_peer`), as SK or as SKF fragments, as
//!   a request or a response, with a message ID in or out of the window,
//!   to either side and from the expected address, the NAT-T port or
//!   another one;
//! - advance time (rekeys, liveness checks, expiries, retransmissions);
//! - operator calls (rekey / delete of child and IKE SAs, initiate);
//! - deliver, drop, duplicate, reorder, replay or corrupt the datagrams
//!   the pair sent each other.
//!
//! After every input it checks, beyond "no panic": each endpoint's tables
//! agree with each other and stay bounded (`fuzzing::check`); the events
//! tell a consistent story (no child SA deleted that was not established,
//! inbound SPIs unique among live child SAs, the child SAs the events
//! leave alive are exactly those the endpoint holds, IKE SA events in
//! order). At the end the link is cut and time runs on: every IKE SA and
//! child SA must go, each with its event.
//!
//! Deterministic crypto: SeededRng makes everything reproducible except
//! ECDSA signatures (BoringSSL draws their nonces itself); PSK
//! authentication needs none, so a crash input replays exactly.
#![no_main]
use anyhub_crypto::dh::{DhGroup, KeyPair};
use anyhub_crypto::{Secret, SeededRng};
use anyhub_ike::config::DpdAction;
use anyhub_ike::fuzzing::{self, SaView};
use anyhub_ike::wire::{
    emit_payloads, Auth, AuthMethod, Delete, DhId, ExchangeType, Id, IdType, Ke, Nonce, Notify,
    NotifyType, Payload, PayloadType, ProtocolId, SaPayload, TrafficSelector, Ts,
};
use anyhub_ike::Identity;
use anyhub_ike::{
    ts, Endpoint, EndpointConfig, Event, IkeSaHandle, IkeState, ProposalSpec, Transmit, TunnelAuth,
    TunnelConfig,
};
use libfuzzer_sys::fuzz_target;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const A: usize = 0;
const B: usize = 1;
const A_IP: [u8; 4] = [192, 0, 2, 1];
const B_IP: [u8; 4] = [192, 0, 2, 2];
/// The NAT in front of A, when there is one.
const NAT_IP: [u8; 4] = [203, 0, 113, 9];
const NAT_BASE: u16 = 10_000;
const MAX_ACTIONS: usize = 64;
/// Datagrams on the wire at once; beyond, the oldest are lost.
const MAX_IN_FLIGHT: usize = 64;
const HISTORY: usize = 16;
/// Bounds for a bounded input: at most MAX_ACTIONS actions, each of which
/// legitimately creates at most a couple of SAs.
const MAX_IKE_SAS: usize = 2 * MAX_ACTIONS + 4;
const MAX_CHILD_SAS: usize = 3 * MAX_ACTIONS + 4;
const MAX_TASKS: usize = 2 * MAX_CHILD_SAS + 8;

fn ip(b: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(b))
}

/// The input, read front to back; zeros once it is used up.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        b.to_vec()
    }
    /// Up to `max - 1` bytes, the count read first.
    fn var(&mut self, max: u8) -> Vec<u8> {
        let n = self.u8() % max;
        self.bytes(usize::from(n))
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Clone, Copy, Debug)]
struct Setup {
    /// AES-GCM + X25519 first, or AES-CBC + HMAC + ECP-256 first.
    gcm: bool,
    /// ESP proposals with a DH group (PFS on rekeys).
    pfs: bool,
    /// Small fragment size: larger messages go as RFC 7383 fragments.
    small_fragments: bool,
    fragmentation: bool,
    nat: bool,
    dpd: bool,
    restart: bool,
    short_lifetimes: bool,
}

impl Setup {
    fn from(b: u8) -> Setup {
        Setup {
            gcm: b & 1 == 0,
            pfs: b & 2 != 0,
            small_fragments: b & 4 != 0,
            fragmentation: b & 8 == 0,
            nat: b & 16 != 0,
            dpd: b & 32 != 0,
            restart: b & 64 != 0,
            short_lifetimes: b & 128 == 0,
        }
    }

    fn ike(&self) -> Vec<ProposalSpec> {
        let mut v = vec!["aes256gcm16-prfsha256-x25519", "aes128-sha256-ecp256"];
        if !self.gcm {
            v.reverse();
        }
        v.iter()
            .map(|p| ProposalSpec::parse_ike(p).unwrap())
            .collect()
    }

    fn esp(&self) -> Vec<ProposalSpec> {
        let v: &[&str] = if self.pfs {
            &["aes256gcm16-x25519", "aes128-sha256-ecp256"]
        } else {
            &["aes256gcm16", "aes128-sha256"]
        };
        v.iter()
            .map(|p| ProposalSpec::parse_esp(p).unwrap())
            .collect()
    }
}

/// The selectors of each side: A's network, then B's.
const NETS: [&str; 2] = ["10.10.0.0/24", "10.20.0.0/24"];

fn tunnel(side: usize, s: &Setup) -> Arc<TunnelConfig> {
    let ids = ["site-a.example.net", "hub.example.net"];
    let (lifetime_ike, lifetime_child) = if s.short_lifetimes {
        (600, 300)
    } else {
        (4 * 3600, 3600)
    };
    Arc::new(TunnelConfig {
        id: ["hub", "site-a"][side].into(),
        local_id: Identity::parse(ids[side]).unwrap(),
        remote_id: Identity::parse(ids[1 - side]).unwrap(),
        auth: TunnelAuth::Psk(Secret::from_slice(b"correct horse battery staple")),
        ike_proposals: s.ike(),
        esp_proposals: s.esp(),
        local_ts: vec![ts::parse(NETS[side]).unwrap()],
        remote_ts: vec![ts::parse(NETS[1 - side]).unwrap()],
        ike_lifetime: Duration::from_secs(lifetime_ike),
        child_lifetime: Duration::from_secs(lifetime_child),
        remote_address: Some(ip(if side == A { B_IP } else { A_IP })),
        initiate: false,
        dpd_delay: s.dpd.then(|| Duration::from_secs(30)),
        dpd_action: if s.restart {
            DpdAction::Restart
        } else {
            DpdAction::Clear
        },
        // Reauthentication (§2.8.3) in a quarter of the runs: no bit of the
        // setup byte is free, so it rides on short lifetimes with CBC.
        reauth_time: (s.short_lifetimes && !s.gcm).then(|| Duration::from_secs(900)),
    })
}

fn endpoint(side: usize, s: &Setup) -> Endpoint {
    let mut cfg = EndpointConfig::new(side as u16 + 1, vec![tunnel(side, s)]);
    cfg.fragmentation = s.fragmentation;
    if s.small_fragments {
        cfg.fragment_size = 576;
    }
    Endpoint::new(cfg, Box::new(SeededRng::new(11 * (side as u64 + 1))))
}

/// Public values that are valid points, made once.
struct Keys {
    x25519: Vec<u8>,
    ecp256: Vec<u8>,
    ecp384: Vec<u8>,
}

fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| {
        let mut rng = SeededRng::new(99);
        let mut public = |g| KeyPair::generate(g, &mut rng).public().to_vec();
        Keys {
            x25519: public(DhGroup::Curve25519),
            ecp256: public(DhGroup::Ecp256),
            ecp384: public(DhGroup::Ecp384),
        }
    })
}

/// Offers the harness can make, acceptable or not.
fn esp_offers() -> &'static [ProposalSpec] {
    static P: OnceLock<Vec<ProposalSpec>> = OnceLock::new();
    P.get_or_init(|| {
        [
            "aes256gcm16",
            "aes256gcm16-x25519",
            "aes128-sha256",
            "aes128-sha256-ecp256",
            "aes256gcm16-ecp384",
            "aes128gcm16-modp2048",
            "aes256gcm16-esn",
        ]
        .iter()
        .map(|p| ProposalSpec::parse_esp(p).unwrap())
        .collect()
    })
}

fn ike_offers() -> &'static [ProposalSpec] {
    static P: OnceLock<Vec<ProposalSpec>> = OnceLock::new();
    P.get_or_init(|| {
        [
            "aes256gcm16-prfsha256-x25519",
            "aes128-sha256-ecp256",
            "aes256gcm16-prfsha384-ecp384",
            "aes128-sha1-modp2048",
        ]
        .iter()
        .map(|p| ProposalSpec::parse_ike(p).unwrap())
        .collect()
    })
}

/// What one side's events have said so far.
#[derive(Default)]
struct Tracker {
    /// Live child SAs: inbound SPI → outbound SPI.
    children: HashMap<u32, u32>,
    /// IKE SAs announced (established or rekeyed into) and not yet deleted.
    ike: HashSet<IkeSaHandle>,
}

/// `ESTABLISHED_TRACE=1` prints actions and events (to read a crash).
fn trace() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var_os("ESTABLISHED_TRACE").is_some())
}

impl Tracker {
    fn event(&mut self, side: usize, e: Event) {
        if trace() {
            eprintln!("  side {side}: {e:?}");
        }
        match e {
            Event::ChildSaEstablished(c) => {
                assert!(
                    self.children.insert(c.spi_in, c.spi_out).is_none(),
                    "side {side}: inbound SPI {:08x} established twice while live",
                    c.spi_in
                );
            }
            Event::ChildSaDeleted {
                spi_in, spi_out, ..
            } => {
                assert_eq!(
                    self.children.remove(&spi_in),
                    Some(spi_out),
                    "side {side}: deleted child SA {spi_in:08x}/{spi_out:08x} was never established"
                );
            }
            Event::IkeSaEstablished(info) => {
                assert!(
                    self.ike.insert(info.handle),
                    "side {side}: IKE SA {:?} established twice",
                    info.handle
                );
            }
            Event::IkeSaRekeyed { old, new } => {
                assert!(
                    self.ike.contains(&old),
                    "side {side}: rekey of unannounced IKE SA {old:?}"
                );
                assert!(
                    self.ike.insert(new.handle),
                    "side {side}: IKE SA {:?} announced twice",
                    new.handle
                );
            }
            Event::IkeSaDeleted { info, reason } => {
                assert!(
                    self.ike.remove(&info.handle),
                    "side {side}: deleted IKE SA {:?} ({reason:?}) was never announced",
                    info.handle
                );
            }
            Event::IkeSaFailed { info, reason } => {
                assert!(
                    !self.ike.contains(&info.handle),
                    "side {side}: established IKE SA {:?} failed ({reason:?})",
                    info.handle
                );
            }
            Event::IkeSaMoved { handle, .. } => {
                assert!(
                    self.ike.contains(&handle),
                    "side {side}: unannounced IKE SA {handle:?} moved"
                );
            }
            Event::IkeSaUpdated(handle) => {
                assert!(
                    self.ike.contains(&handle),
                    "side {side}: takeover state of unannounced IKE SA {handle:?} updated"
                );
            }
            Event::ChildSaFailed { .. } => {}
        }
    }
}

struct World {
    setup: Setup,
    start: Instant,
    now: Instant,
    eps: [Endpoint; 2],
    tracks: [Tracker; 2],
    in_flight: VecDeque<(usize, Transmit)>,
    history: VecDeque<(usize, Transmit)>,
    link_up: bool,
}

impl World {
    fn new(setup: Setup) -> World {
        let now = Instant::now();
        World {
            setup,
            start: now,
            now,
            eps: [endpoint(A, &setup), endpoint(B, &setup)],
            tracks: [Tracker::default(), Tracker::default()],
            in_flight: VecDeque::new(),
            history: VecDeque::new(),
            link_up: true,
        }
    }

    fn addr_of(side: usize, port: u16) -> SocketAddr {
        SocketAddr::new(ip(if side == A { A_IP } else { B_IP }), port)
    }

    /// Collects what the endpoints sent and said.
    fn settle(&mut self) {
        for side in [A, B] {
            while let Some(t) = self.eps[side].poll_transmit() {
                if self.link_up {
                    self.in_flight.push_back((side, t));
                }
            }
            while let Some(e) = self.eps[side].poll_event() {
                self.tracks[side].event(side, e);
            }
        }
        while self.in_flight.len() > MAX_IN_FLIGHT {
            self.in_flight.pop_front();
        }
    }

    /// The invariants, between actions.
    fn check(&self) {
        for side in [A, B] {
            let sizes = fuzzing::check(&self.eps[side])
                .unwrap_or_else(|e| panic!("side {side}: tables disagree: {e}"));
            assert!(sizes.ike_sas <= MAX_IKE_SAS, "side {side}: {sizes:?}");
            assert!(sizes.child_sas <= MAX_CHILD_SAS, "side {side}: {sizes:?}");
            assert!(sizes.tasks <= MAX_TASKS, "side {side}: {sizes:?}");
            let held: HashSet<u32> = fuzzing::sas(&self.eps[side])
                .iter()
                .flat_map(|s| s.children.iter().map(|c| c.0))
                .collect();
            let told: HashSet<u32> = self.tracks[side].children.keys().copied().collect();
            assert_eq!(
                held, told,
                "side {side}: child SAs held differ from those the events left alive"
            );
        }
    }

    /// Where a datagram arrives: (receiver's local address, sender as seen).
    fn route(&self, from: usize, t: &Transmit) -> Option<(SocketAddr, SocketAddr)> {
        let nat = self.setup.nat;
        if from == A {
            if t.remote.ip() != ip(B_IP) {
                return None;
            }
            let seen = if nat {
                SocketAddr::new(ip(NAT_IP), NAT_BASE + t.local.port())
            } else {
                t.local
            };
            Some((t.remote, seen))
        } else if nat {
            if t.remote.ip() != ip(NAT_IP) || t.remote.port() < NAT_BASE {
                return None;
            }
            Some((Self::addr_of(A, t.remote.port() - NAT_BASE), t.local))
        } else if t.remote.ip() == ip(A_IP) {
            Some((t.remote, t.local))
        } else {
            None
        }
    }

    fn deliver(&mut self, from: usize, t: Transmit) {
        if trace() {
            eprintln!(
                " datagram {from} -> {}: {} bytes",
                1 - from,
                t.payload.len()
            );
        }
        // NAT keepalives: the driver filters them (RFC 3948 §2.3).
        if !t.natt && t.payload == [0xff] {
            return;
        }
        if let Some((local, remote)) = self.route(from, &t) {
            self.eps[1 - from].handle(self.now, local, remote, &t.payload);
        }
        self.history.push_back((from, t));
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }
        self.settle();
    }

    fn pump(&mut self, limit: usize) {
        for _ in 0..limit {
            let Some((from, t)) = self.in_flight.pop_front() else {
                return;
            };
            self.deliver(from, t);
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        for side in [A, B] {
            self.eps[side].handle_timeout(self.now);
        }
        self.settle();
    }

    fn to_next_timer(&mut self) {
        let next = self.eps.iter().filter_map(|e| e.poll_timeout()).min();
        if let Some(t) = next {
            self.now = self.now.max(t);
            for side in [A, B] {
                self.eps[side].handle_timeout(self.now);
            }
            self.settle();
        }
    }

    fn established(&self) -> bool {
        self.eps
            .iter()
            .all(|e| e.ike_sas().iter().any(|s| s.state == IkeState::Established))
    }

    // ------------------------------------------------------------ actions

    fn step(&mut self, inp: &mut Input) {
        let op = inp.u8() % 16;
        if trace() {
            eprintln!("action {op} at +{:?}", self.now - self.start);
        }
        match op {
            0..=3 => self.inject(inp),
            4 => {
                let secs = inp.u8();
                self.advance(Duration::from_secs(u64::from(secs)))
            }
            5 => {
                let mins = inp.u8();
                self.advance(Duration::from_secs(60 * u64::from(mins)))
            }
            6 => self.to_next_timer(),
            7 => self.operator(inp),
            8 => {
                if let Some(i) = self.pick_in_flight(inp) {
                    let (from, t) = self.in_flight.remove(i).unwrap();
                    self.deliver(from, t);
                }
            }
            9 => {
                if let Some(i) = self.pick_in_flight(inp) {
                    self.in_flight.remove(i);
                }
            }
            10 => {
                if let Some(i) = self.pick_in_flight(inp) {
                    let d = self.in_flight[i].clone();
                    self.in_flight.push_back(d);
                }
            }
            11 => {
                if let Some(i) = self.pick_in_flight(inp) {
                    let d = self.in_flight.remove(i).unwrap();
                    self.in_flight.push_front(d);
                }
            }
            12 => {
                if !self.history.is_empty() {
                    let i = usize::from(inp.u8()) % self.history.len();
                    let (from, t) = self.history[i].clone();
                    self.deliver(from, t);
                }
            }
            13 => {
                if let Some(i) = self.pick_in_flight(inp) {
                    let (from, mut t) = self.in_flight[i].clone();
                    if !t.payload.is_empty() {
                        let at = usize::from(inp.u16()) % t.payload.len();
                        t.payload[at] ^= inp.u8() | 1;
                    }
                    self.deliver(from, t);
                }
            }
            14 => {
                let side = usize::from(inp.u8() & 1);
                let id = ["hub", "site-a"][side];
                let local = Self::addr_of(side, 500);
                let remote = Self::addr_of(1 - side, 500);
                let _ = self.eps[side].initiate(self.now, id, local, remote);
                self.settle();
            }
            _ => self.pump(256),
        }
    }

    fn pick_in_flight(&self, inp: &mut Input) -> Option<usize> {
        let i = usize::from(inp.u8());
        (!self.in_flight.is_empty()).then(|| i % self.in_flight.len())
    }

    fn operator(&mut self, inp: &mut Input) {
        let side = usize::from(inp.u8() & 1);
        let kind = inp.u8() % 4;
        let sas = self.eps[side].ike_sas();
        let pick = inp.u8();
        let handle = match sas.len() {
            0 => IkeSaHandle(u64::from(pick)),
            n => sas[usize::from(pick) % n].handle,
        };
        let children = self.eps[side].child_sas_of(handle);
        let pick = inp.u8();
        let spi = match children.len() {
            0 => u32::from(pick),
            n => children[usize::from(pick) % n],
        };
        let now = self.now;
        let ep = &mut self.eps[side];
        let _ = match kind {
            0 => ep.rekey_child_sa(now, handle, spi),
            1 => ep.rekey_ike_sa(now, handle),
            2 => ep.delete_child_sa(now, handle, spi),
            _ => ep.delete_ike_sa(now, handle),
        };
        self.settle();
    }

    /// Builds a message as the peer of one of `side`'s IKE SAs would, seals
    /// it with that SA's keys and hands it to `side`.
    fn inject(&mut self, inp: &mut Input) {
        let b = inp.u8();
        let side = usize::from(b & 1);
        let response = b & 2 != 0;
        let exchange = match inp.u8() % 10 {
            0..=2 => ExchangeType::CREATE_CHILD_SA,
            3..=5 => ExchangeType::INFORMATIONAL,
            6 => ExchangeType::IKE_AUTH,
            7 => ExchangeType::IKE_SA_INIT,
            _ => ExchangeType(inp.u8()),
        };
        let views: Vec<SaView> = fuzzing::sas(&self.eps[side])
            .into_iter()
            .filter(|v| v.has_keys)
            .collect();
        if views.is_empty() {
            return;
        }
        let v = views[usize::from(inp.u8()) % views.len()].clone();
        let expected = if response {
            v.outstanding.unwrap_or(v.next_peer_request_id)
        } else {
            v.next_peer_request_id
        };
        let message_id = match inp.u8() % 8 {
            0..=3 => expected,
            4 => expected.wrapping_sub(1),
            5 => expected.wrapping_add(1),
            6 => inp.u32(),
            _ => expected.wrapping_add(u32::from(inp.u8())),
        };
        let (first, plain) = chain(inp, &v, side, response);
        if trace() {
            let parsed = anyhub_ike::wire::parse_payloads(first, &plain);
            eprintln!(
                " inject to {side}: {exchange:?} #{message_id} response={response} {parsed:?}"
            );
        }
        let (local, remote) = match inp.u8() % 8 {
            6 => (
                SocketAddr::new(v.local.ip(), 4500),
                SocketAddr::new(v.remote.ip(), 4500),
            ),
            7 => (
                v.local,
                SocketAddr::new(ip([198, 51, 100, 7]), v.remote.port()),
            ),
            _ => (v.local, v.remote),
        };
        let mut datagrams = Vec::new();
        match inp.u8() % 4 {
            0 | 1 => datagrams.extend(fuzzing::seal_from_peer(
                &mut self.eps[side],
                v.handle,
                exchange,
                message_id,
                response,
                first,
                &plain,
                None,
            )),
            mode => {
                // SKF fragments (RFC 7383 §2.5): in order, or numbered (and
                // totalled) as the input says.
                let total = 1 + u16::from(inp.u8() % 4);
                let size = plain.len().div_ceil(usize::from(total)).max(1);
                let chunks: Vec<&[u8]> = (0..usize::from(total))
                    .map(|i| {
                        let start = (i * size).min(plain.len());
                        &plain[start..((i + 1) * size).min(plain.len())]
                    })
                    .collect();
                let sends = if mode == 2 {
                    (1..=total).map(|n| (n, total)).collect::<Vec<_>>()
                } else {
                    (0..usize::from(total) + usize::from(inp.u8() % 3))
                        .map(|_| {
                            let n = 1 + u16::from(inp.u8()) % (total + 1);
                            let t = match inp.u8() % 6 {
                                0 => total + 1,
                                1 => total.saturating_sub(1),
                                _ => total,
                            };
                            (n, t)
                        })
                        .collect()
                };
                for (n, t) in sends {
                    let chunk = chunks.get(usize::from(n).wrapping_sub(1)).copied();
                    let first = if n == 1 { first } else { PayloadType::NONE };
                    datagrams.extend(fuzzing::seal_from_peer(
                        &mut self.eps[side],
                        v.handle,
                        exchange,
                        message_id,
                        response,
                        first,
                        chunk.unwrap_or(b"x"),
                        Some((n, t)),
                    ));
                }
            }
        }
        for d in datagrams {
            self.eps[side].handle(self.now, local, remote, &d);
            self.settle();
        }
    }
}

/// The plaintext payload chain of an injected message: maybe a template of
/// a well-formed request or answer, with arbitrary payloads around it.
fn chain(inp: &mut Input, v: &SaView, side: usize, response: bool) -> (PayloadType, Vec<u8>) {
    let mut payloads = Vec::new();
    // The peer's networks are TSi of its requests and of our answers... the
    // harness plays the peer: its own side is the other one.
    let (peer_net, our_net) = (NETS[1 - side], NETS[side]);
    let (tsi_net, tsr_net) = if response {
        // Answering our request: TSi is our side (we initiated).
        (our_net, peer_net)
    } else {
        (peer_net, our_net)
    };
    match inp.u8() % 10 {
        0 | 1 => {}
        2 | 3 => {
            // A new child SA, or a rekey of one (REKEY_SA, §1.3.3).
            if inp.bool() {
                payloads.push(Payload::Notify(Notify {
                    protocol: ProtocolId::ESP,
                    spi: spi4(inp, v),
                    ty: NotifyType::REKEY_SA,
                    data: vec![],
                }));
            }
            payloads.push(esp_sa(inp, response));
            payloads.push(nonce(inp));
            if inp.u8() % 3 != 0 {
                payloads.push(ke(inp));
            }
            payloads.push(Payload::TsI(tss(inp, tsi_net)));
            payloads.push(Payload::TsR(tss(inp, tsr_net)));
        }
        4 => {
            // IKE SA rekey (§1.3.2).
            payloads.push(ike_sa(inp, response));
            payloads.push(nonce(inp));
            payloads.push(ke(inp));
        }
        5 | 6 => {
            let n = 1 + usize::from(inp.u8() % 3);
            payloads.push(Payload::Delete(Delete {
                protocol: ProtocolId::ESP,
                spi_size: 4,
                spis: (0..n).map(|_| spi4(inp, v)).collect(),
            }));
        }
        7 => payloads.push(Payload::Delete(Delete {
            protocol: ProtocolId::IKE,
            spi_size: 0,
            spis: vec![],
        })),
        8 => payloads.push(Payload::Notify(notify(inp, v))),
        _ => {}
    }
    for _ in 0..inp.u8() % 5 {
        let p = payload(inp, v, tsi_net, tsr_net, response);
        let at = usize::from(inp.u8()) % (payloads.len() + 1);
        payloads.insert(at, p);
    }
    let mut out = Vec::new();
    let mut first = emit_payloads(&payloads, &mut out);
    match inp.u8() % 16 {
        0 => out.extend(inp.var(16)),
        1 => first = PayloadType(inp.u8()),
        2 if !out.is_empty() => {
            let at = usize::from(inp.u16()) % out.len();
            out[at] ^= inp.u8();
        }
        _ => {}
    }
    (first, out)
}

fn payload(inp: &mut Input, v: &SaView, tsi_net: &str, tsr_net: &str, response: bool) -> Payload {
    match inp.u8() % 14 {
        0 | 1 => Payload::Notify(notify(inp, v)),
        2 => {
            let protocol = ProtocolId(inp.u8() % 5);
            let (spi_size, n) = (inp.u8() % 9, usize::from(inp.u8() % 4));
            let spis = (0..n)
                .map(|_| {
                    if spi_size == 4 && inp.bool() {
                        spi4(inp, v)
                    } else {
                        inp.bytes(usize::from(spi_size))
                    }
                })
                .collect();
            Payload::Delete(Delete {
                protocol,
                spi_size,
                spis,
            })
        }
        3 => esp_sa(inp, response),
        4 => ike_sa(inp, response),
        5 => nonce(inp),
        6 => ke(inp),
        7 => Payload::TsI(tss(inp, tsi_net)),
        8 => Payload::TsR(tss(inp, tsr_net)),
        9 => {
            let id = Id {
                ty: IdType(inp.u8() % 12),
                data: inp.var(24),
            };
            if inp.bool() {
                Payload::IdI(id)
            } else {
                Payload::IdR(id)
            }
        }
        10 => Payload::Auth(Auth {
            method: AuthMethod(inp.u8() % 16),
            data: inp.var(40),
        }),
        11 => Payload::VendorId(inp.var(16)),
        _ => {
            // Any type at all (a known one gets a garbage body), maybe critical.
            let ty = PayloadType(inp.u8());
            let critical = inp.bool();
            let len = usize::from(inp.u8() % 48);
            Payload::Unknown {
                ty,
                critical,
                body: inp.bytes(len),
            }
        }
    }
}

fn notify(inp: &mut Input, v: &SaView) -> Notify {
    const TYPES: [NotifyType; 14] = [
        NotifyType::REKEY_SA,
        NotifyType::INVALID_KE_PAYLOAD,
        NotifyType::TEMPORARY_FAILURE,
        NotifyType::CHILD_SA_NOT_FOUND,
        NotifyType::NO_PROPOSAL_CHOSEN,
        NotifyType::AUTHENTICATION_FAILED,
        NotifyType::INITIAL_CONTACT,
        NotifyType::TS_UNACCEPTABLE,
        NotifyType::INVALID_SYNTAX,
        NotifyType::NO_ADDITIONAL_SAS,
        NotifyType::COOKIE,
        NotifyType::IKEV2_FRAGMENTATION_SUPPORTED,
        NotifyType::NAT_DETECTION_SOURCE_IP,
        NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD,
    ];
    let sel = inp.u8();
    let ty = match TYPES.get(usize::from(sel) % 16) {
        Some(t) => *t,
        None => NotifyType(inp.u16()),
    };
    let (protocol, spi) = match inp.u8() % 4 {
        0 | 1 => (ProtocolId::NONE, vec![]),
        2 => (ProtocolId::ESP, spi4(inp, v)),
        _ => (ProtocolId(inp.u8() % 5), inp.var(9)),
    };
    let data = match inp.u8() % 4 {
        0 => vec![],
        // A DH group (INVALID_KE_PAYLOAD's data).
        1 => [DhId::CURVE25519, DhId::ECP256, DhId::ECP384, DhId::MODP2048]
            [usize::from(inp.u8() % 4)]
        .0
        .to_be_bytes()
        .to_vec(),
        _ => inp.var(24),
    };
    Notify {
        protocol,
        spi,
        ty,
        data,
    }
}

/// A 4-octet SPI: mostly one of the SA's child SAs' (the peer names its
/// inbound SPI, our outbound one), sometimes ours, random or another size.
fn spi4(inp: &mut Input, v: &SaView) -> Vec<u8> {
    let sel = inp.u8();
    let pick = usize::from(inp.u8());
    let child = (!v.children.is_empty()).then(|| v.children[pick % v.children.len()]);
    match (sel % 8, child) {
        (0..=3, Some((_, out))) => out.to_be_bytes().to_vec(),
        (4, Some((spi_in, _))) => spi_in.to_be_bytes().to_vec(),
        (5, _) => vec![0; 4],
        (6, _) => inp.var(9),
        _ => inp.u32().to_be_bytes().to_vec(),
    }
}

fn esp_sa(inp: &mut Input, response: bool) -> Payload {
    let offers = esp_offers();
    let n = if response { 1 } else { 1 + inp.u8() % 3 };
    let proposals = (0..n)
        .map(|i| {
            let spec = &offers[usize::from(inp.u8()) % offers.len()];
            let spi = match inp.u8() % 8 {
                0 => inp.var(9),
                _ => inp.u32().to_be_bytes().to_vec(),
            };
            let mut p = spec.to_wire(i + 1, spi, inp.u8() % 4 != 0);
            if inp.u8() % 8 == 0 && !p.transforms.is_empty() {
                let t = usize::from(inp.u8()) % p.transforms.len();
                p.transforms[t].id = inp.u16();
            }
            p
        })
        .collect();
    Payload::Sa(SaPayload { proposals })
}

fn ike_sa(inp: &mut Input, response: bool) -> Payload {
    let offers = ike_offers();
    let n = if response { 1 } else { 1 + inp.u8() % 2 };
    let proposals = (0..n)
        .map(|i| {
            let spec = &offers[usize::from(inp.u8()) % offers.len()];
            let spi = match inp.u8() % 8 {
                0 => inp.var(9),
                // SPIs that collide with the SAs' own are worth a try.
                1 => vec![0; 8],
                _ => {
                    let mut s = inp.bytes(8);
                    s.resize(8, 0x5a);
                    s
                }
            };
            let mut p = spec.to_wire(i + 1, spi, true);
            if inp.u8() % 8 == 0 && !p.transforms.is_empty() {
                let t = usize::from(inp.u8()) % p.transforms.len();
                p.transforms[t].id = inp.u16();
            }
            p
        })
        .collect();
    Payload::Sa(SaPayload { proposals })
}

fn nonce(inp: &mut Input) -> Payload {
    let len = match inp.u8() % 8 {
        0..=3 => 32,
        4 => 16,
        5 => 256,
        6 => 15,
        _ => usize::from(inp.u8()),
    };
    let seed = inp.u8();
    Payload::Nonce(Nonce(
        (0..len).map(|i| seed.wrapping_add(i as u8)).collect(),
    ))
}

fn ke(inp: &mut Input) -> Payload {
    let k = keys();
    let (group, mut data) = match inp.u8() % 8 {
        0..=2 => (DhId::CURVE25519, k.x25519.clone()),
        3 | 4 => (DhId::ECP256, k.ecp256.clone()),
        5 => (DhId::ECP384, k.ecp384.clone()),
        6 => (DhId::CURVE25519, {
            let mut d = inp.bytes(32);
            d.resize(32, 0);
            d
        }),
        _ => (DhId(inp.u16()), inp.var(70)),
    };
    if inp.u8() % 16 == 0 {
        data.truncate(usize::from(inp.u8()) % (data.len() + 1));
    }
    Payload::Ke(Ke { group, data })
}

/// Traffic selectors around `net` (a /24): the same, narrower, wider, other
/// ranges, IPv6, with protocols and ports.
fn tss(inp: &mut Input, net: &str) -> Ts {
    let base = ts::parse(net).unwrap();
    let n = 1 + inp.u8() % 3;
    let selectors = (0..n)
        .map(|_| match inp.u8() % 8 {
            0..=3 => base.clone(),
            4 => {
                let IpAddr::V4(s) = base.start_addr else {
                    unreachable!()
                };
                let lo = u32::from(s) + u32::from(inp.u8());
                let hi = lo.saturating_add(u32::from(inp.u8()));
                TrafficSelector::new(0, 0, 65535, ip(lo.to_be_bytes()), ip(hi.to_be_bytes()))
                    .unwrap()
            }
            5 => TrafficSelector::new(0, 0, 65535, ip([0, 0, 0, 0]), ip([255, 255, 255, 255]))
                .unwrap(),
            6 => TrafficSelector::new(
                inp.u8(),
                inp.u16(),
                inp.u16(),
                ip(inp.u32().to_be_bytes()),
                ip(inp.u32().to_be_bytes()),
            )
            .unwrap(),
            _ => TrafficSelector::new(
                0,
                0,
                65535,
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                IpAddr::V6(Ipv6Addr::from(u128::MAX >> (inp.u8() % 128))),
            )
            .unwrap(),
        })
        .collect();
    Ts { selectors }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let setup = Setup::from(inp.u8());
    let mut w = World::new(setup);
    w.eps[A]
        .initiate(w.now, "hub", World::addr_of(A, 500), World::addr_of(B, 500))
        .unwrap();
    w.settle();
    w.pump(64);
    assert!(w.established(), "the handshake completes ({setup:?})");
    w.check();

    for _ in 0..MAX_ACTIONS {
        if inp.is_empty() {
            break;
        }
        w.step(&mut inp);
        w.check();
    }

    // The link goes down and time runs on: every IKE SA ends (unanswered
    // requests, expiry), each child SA with its own event.
    w.link_up = false;
    w.in_flight.clear();
    for _ in 0..4000 {
        if w.eps.iter().all(|e| e.poll_timeout().is_none()) {
            break;
        }
        w.to_next_timer();
        if setup.restart {
            // A tunnel that restarts (DpdAction::Restart) would try to
            // connect for ever: the operator gives up on those attempts.
            for side in [A, B] {
                for s in w.eps[side].ike_sas() {
                    if s.state == IkeState::Connecting {
                        w.eps[side].delete_ike_sa(w.now, s.handle);
                    }
                }
            }
            w.settle();
        }
        w.check();
    }
    if std::env::var_os("ESTABLISHED_STATS").is_some() {
        for side in [A, B] {
            let c = w.eps[side].counters().pairs();
            let c: Vec<String> = c.iter().map(|(k, v)| format!("{k}={v}")).collect();
            eprintln!("STATS {}", c.join(" "));
        }
    }
    for side in [A, B] {
        let left = w.eps[side].ike_sas();
        assert!(left.is_empty(), "side {side}: SAs left over: {left:?}");
        assert!(
            w.tracks[side].children.is_empty(),
            "side {side}: child SAs never deleted: {:?}",
            w.tracks[side].children
        );
        assert!(
            w.tracks[side].ike.is_empty(),
            "side {side}: IKE SAs never deleted: {:?}",
            w.tracks[side].ike
        );
    }
});
