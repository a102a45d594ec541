//! The in-memory pair simulator shared by the protocol tests: an initiator
//! and a responder Endpoint wired together with a virtual clock, packet
//! loss and an optional NAT in front of the initiator (quinn's `Pair`).
#![allow(dead_code)]

use anyhub_crypto::{Secret, SeededRng};
use anyhub_ike::config::DpdAction;
use anyhub_ike::{
    ts, ChildSa, Endpoint, EndpointConfig, Event, Identity, IkeState, ProposalSpec, Transmit,
    TunnelAuth, TunnelConfig,
};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const A_IP: &str = "192.0.2.1";
pub const B_IP: &str = "192.0.2.2";
/// The public address of the NAT in front of A, when there is one.
pub const NAT_IP: &str = "203.0.113.9";

pub fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

pub struct TunnelSpec {
    pub id: &'static str,
    pub local_id: &'static str,
    pub remote_id: &'static str,
    pub psk: &'static str,
    pub ike: &'static [&'static str],
    pub esp: &'static [&'static str],
    pub local_ts: &'static [&'static str],
    pub remote_ts: &'static [&'static str],
    /// Seconds.
    pub ike_lifetime: u64,
    pub child_lifetime: u64,
    pub dpd: Option<u64>,
    pub dpd_action: DpdAction,
    /// Seconds.
    pub reauth: Option<u64>,
}

impl TunnelSpec {
    pub fn site() -> TunnelSpec {
        TunnelSpec {
            id: "hub",
            local_id: "site-a.example.net",
            remote_id: "hub.example.net",
            psk: "correct horse battery staple",
            ike: &["aes256gcm16-prfsha256-x25519"],
            esp: &["aes256gcm16"],
            local_ts: &["10.10.0.0/24"],
            remote_ts: &["10.20.0.0/24"],
            ike_lifetime: 4 * 3600,
            child_lifetime: 3600,
            dpd: None,
            dpd_action: DpdAction::Clear,
            reauth: None,
        }
    }

    pub fn hub() -> TunnelSpec {
        TunnelSpec {
            id: "site-a",
            local_id: "hub.example.net",
            remote_id: "site-a.example.net",
            psk: "correct horse battery staple",
            ike: &["aes256gcm16-prfsha256-x25519"],
            esp: &["aes256gcm16"],
            local_ts: &["10.20.0.0/24"],
            remote_ts: &["10.10.0.0/24"],
            ike_lifetime: 4 * 3600,
            child_lifetime: 3600,
            dpd: None,
            dpd_action: DpdAction::Clear,
            reauth: None,
        }
    }

    pub fn build(&self) -> Arc<TunnelConfig> {
        self.build_with(TunnelAuth::Psk(Secret::from_slice(self.psk.as_bytes())))
    }

    /// The tunnel with another authentication than its PSK.
    pub fn build_with(&self, auth: TunnelAuth) -> Arc<TunnelConfig> {
        Arc::new(TunnelConfig {
            id: self.id.into(),
            local_id: Identity::parse(self.local_id).unwrap(),
            remote_id: Identity::parse(self.remote_id).unwrap(),
            auth,
            ike_proposals: self
                .ike
                .iter()
                .map(|p| ProposalSpec::parse_ike(p).unwrap())
                .collect(),
            esp_proposals: self
                .esp
                .iter()
                .map(|p| ProposalSpec::parse_esp(p).unwrap())
                .collect(),
            local_ts: self
                .local_ts
                .iter()
                .map(|t| ts::parse(t).unwrap())
                .collect(),
            remote_ts: self
                .remote_ts
                .iter()
                .map(|t| ts::parse(t).unwrap())
                .collect(),
            ike_lifetime: Duration::from_secs(self.ike_lifetime),
            child_lifetime: Duration::from_secs(self.child_lifetime),
            remote_address: Some(B_IP.parse().unwrap()),
            initiate: false,
            dpd_delay: self.dpd.map(Duration::from_secs),
            dpd_action: self.dpd_action,
            reauth_time: self.reauth.map(Duration::from_secs),
        })
    }
}

pub fn endpoint(node: u16, seed: u64, tunnels: &[TunnelSpec]) -> Endpoint {
    endpoint_with(node, seed, tunnels, |_| {})
}

/// An endpoint whose config `tweak` adjusts first.
pub fn endpoint_with(
    node: u16,
    seed: u64,
    tunnels: &[TunnelSpec],
    tweak: impl FnOnce(&mut EndpointConfig),
) -> Endpoint {
    let mut cfg = EndpointConfig::new(node, tunnels.iter().map(TunnelSpec::build).collect());
    tweak(&mut cfg);
    Endpoint::new(cfg, Box::new(SeededRng::new(seed)))
}

/// A side of the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// Decides whether datagram number `i` (sent by `side`) is lost.
pub type LossFn = Box<dyn FnMut(usize, Side, &Transmit) -> bool>;

pub struct Pair {
    pub now: Instant,
    pub a: Endpoint,
    pub b: Endpoint,
    pub a_events: Vec<Event>,
    pub b_events: Vec<Event>,
    /// Every datagram that left either side, in order.
    pub sent: Vec<(Side, Transmit)>,
    /// Drops a datagram when it returns true (called with its index in `sent`).
    pub loss: LossFn,
    /// A is behind a NAT: B sees A's datagrams from NAT_IP.
    pub nat: bool,
    /// The NAT gives A's port p the public port `nat_base + p`.
    pub nat_base: u16,
    /// NAT keepalives (RFC 3948 §2.3) each side sent; the driver filters
    /// them, so they are counted here, not delivered.
    pub keepalives: [usize; 2],
}

impl Pair {
    pub fn new(a: Endpoint, b: Endpoint) -> Pair {
        Pair {
            now: Instant::now(),
            a,
            b,
            a_events: vec![],
            b_events: vec![],
            sent: vec![],
            loss: Box::new(|_, _, _| false),
            nat: false,
            nat_base: 10_000,
            keepalives: [0, 0],
        }
    }

    pub fn standard() -> Pair {
        Pair::new(
            endpoint(1, 11, &[TunnelSpec::site()]),
            endpoint(2, 22, &[TunnelSpec::hub()]),
        )
    }

    pub fn initiate(&mut self) {
        self.a
            .initiate(self.now, "hub", addr(A_IP, 500), addr(B_IP, 500))
            .unwrap();
    }

    /// Delivers datagrams and fires timers until nothing is left or `limit`
    /// of virtual time has passed.
    pub fn drive_for(&mut self, limit: Duration) {
        let end = self.now + limit;
        for _ in 0..10_000 {
            let mut moved = false;
            while let Some(t) = self.a.poll_transmit() {
                moved = true;
                self.deliver(Side::A, t);
            }
            while let Some(t) = self.b.poll_transmit() {
                moved = true;
                self.deliver(Side::B, t);
            }
            while let Some(e) = self.a.poll_event() {
                self.a_events.push(e);
            }
            while let Some(e) = self.b.poll_event() {
                self.b_events.push(e);
            }
            if moved {
                continue;
            }
            let next = [self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.a.handle_timeout(self.now);
                    self.b.handle_timeout(self.now);
                }
                _ => return,
            }
        }
        panic!("pair did not settle");
    }

    pub fn drive(&mut self) {
        self.drive_for(Duration::from_secs(600));
    }

    pub fn deliver(&mut self, from: Side, t: Transmit) {
        let i = self.sent.len();
        self.sent.push((from, t.clone()));
        if (self.loss)(i, from, &t) {
            return;
        }
        if !t.natt && t.payload == [0xff] {
            assert_eq!(t.local.port(), 4500, "keepalives go on the NAT-T port");
            self.keepalives[from as usize] += 1;
            return;
        }
        match from {
            Side::A => {
                assert_eq!(t.remote.ip(), B_IP.parse::<IpAddr>().unwrap());
                assert_eq!(t.natt, t.local.port() == 4500);
                let seen_from = if self.nat {
                    addr(NAT_IP, self.nat_base + t.local.port())
                } else {
                    t.local
                };
                self.b.handle(self.now, t.remote, seen_from, &t.payload);
            }
            Side::B => {
                let (to, local) = if self.nat {
                    assert_eq!(t.remote.ip(), NAT_IP.parse::<IpAddr>().unwrap());
                    (addr(A_IP, t.remote.port() - self.nat_base), t.local)
                } else {
                    (t.remote, t.local)
                };
                self.a.handle(self.now, to, local, &t.payload);
            }
        }
    }

    pub fn children(events: &[Event]) -> Vec<&ChildSa> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::ChildSaEstablished(c) => Some(&**c),
                _ => None,
            })
            .collect()
    }

    pub fn established(&self) -> bool {
        let up = |e: &Endpoint| {
            e.ike_sas()
                .iter()
                .filter(|s| s.state == IkeState::Established)
                .count()
        };
        up(&self.a) == 1 && up(&self.b) == 1
    }

    /// Both sides hold the same child SA, mirrored.
    pub fn assert_child_agrees(&self) -> (ChildSa, ChildSa) {
        let ca = Pair::children(&self.a_events);
        let cb = Pair::children(&self.b_events);
        assert_eq!((ca.len(), cb.len()), (1, 1), "one child on each side");
        let (a, b) = (ca[0], cb[0]);
        assert_eq!(a.spi_out, b.spi_in);
        assert_eq!(a.spi_in, b.spi_out);
        assert_eq!(a.keys_out.encr.as_bytes(), b.keys_in.encr.as_bytes());
        assert_eq!(a.keys_in.encr.as_bytes(), b.keys_out.encr.as_bytes());
        assert_ne!(a.keys_in.encr.as_bytes(), a.keys_out.encr.as_bytes());
        assert_eq!(
            a.keys_out.integ.as_ref().map(|k| k.as_bytes().to_vec()),
            b.keys_in.integ.as_ref().map(|k| k.as_bytes().to_vec())
        );
        assert_eq!(a.proposal.to_string(), b.proposal.to_string());
        assert_eq!(a.local_ts, b.remote_ts);
        assert_eq!(a.remote_ts, b.local_ts);
        (a.clone(), b.clone())
    }
}
