//! IKE SA takeover through the bus, in memory: the customer's router P
//! establishes with hub node 1; node 1 publishes its IKE SA's takeover
//! state on every `IkeSaUpdated` (export → protobuf record → sa-sync core);
//! node 2 receives the record, decodes it and adopts the SA; P's next
//! liveness check and its DELETE are handled by node 2, whose delete
//! tombstones the record on every node.

use anyhub_crypto::{Secret, SeededRng};
use anyhub_ike::config::DpdAction;
use anyhub_ike::{
    ts, Endpoint, EndpointConfig, Event, Identity, IkeSaHandle, ProposalSpec, SaEndReason,
    TunnelAuth, TunnelConfig,
};
use anyhub_sa_sync::convert::{self, Publish};
use anyhub_sa_sync::{pb, Config, Key, Node};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NOW: u64 = 1_700_000_000_000;

fn tunnel(
    id: &str,
    local_id: &str,
    remote_id: &str,
    l: &str,
    r: &str,
    dpd: Option<u64>,
) -> Arc<TunnelConfig> {
    Arc::new(TunnelConfig {
        id: id.into(),
        local_id: Identity::parse(local_id).unwrap(),
        remote_id: Identity::parse(remote_id).unwrap(),
        auth: TunnelAuth::Psk(Secret::from_slice(b"correct horse battery staple")),
        ike_proposals: vec![ProposalSpec::parse_ike("aes256gcm16-prfsha256-x25519").unwrap()],
        esp_proposals: vec![ProposalSpec::parse_esp("aes256gcm16").unwrap()],
        local_ts: vec![ts::parse(l).unwrap()],
        remote_ts: vec![ts::parse(r).unwrap()],
        ike_lifetime: Duration::from_secs(4 * 3600),
        child_lifetime: Duration::from_secs(3600),
        remote_address: None,
        initiate: false,
        dpd_delay: dpd.map(Duration::from_secs),
        dpd_action: DpdAction::Clear,
        reauth_time: None,
    })
}

fn hub(node: u16, seed: u64) -> Endpoint {
    let t = tunnel(
        "site-a",
        "hub.example.net",
        "site-a.example.net",
        "10.20.0.0/24",
        "10.10.0.0/24",
        None,
    );
    let mut config = EndpointConfig::new(node, vec![t]);
    // One fixed Instant ↔ wall-clock mapping: exports at the same `now`
    // give the same milliseconds (the system clock read twice need not).
    config.wall_clock = anyhub_ike::config::WallClock::Anchored {
        instant: *ANCHOR,
        wall: std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    };
    Endpoint::new(config, Box::new(SeededRng::new(seed)))
}

static ANCHOR: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

fn site() -> Endpoint {
    let t = tunnel(
        "hub",
        "site-a.example.net",
        "hub.example.net",
        "10.10.0.0/24",
        "10.20.0.0/24",
        Some(30),
    );
    Endpoint::new(EndpointConfig::new(9, vec![t]), Box::new(SeededRng::new(7)))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Moves datagrams between P and the hub node until both are quiet;
/// returns the hub's events.
fn exchange(now: Instant, p: &mut Endpoint, hub: &mut Endpoint) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        let mut moved = false;
        while let Some(t) = p.poll_transmit() {
            hub.handle(now, t.remote, t.local, &t.payload);
            moved = true;
        }
        while let Some(t) = hub.poll_transmit() {
            p.handle(now, t.remote, t.local, &t.payload);
            moved = true;
        }
        while p.poll_event().is_some() {}
        while let Some(e) = hub.poll_event() {
            events.push(e);
        }
        if !moved {
            return events;
        }
    }
}

fn pump(a: &mut Node, b: &mut Node, now: u64) {
    loop {
        let mut moved = false;
        while let Some(t) = a.poll_transmit() {
            b.handle(a.node(), t.frame, now);
            moved = true;
        }
        while let Some(t) = b.poll_transmit() {
            a.handle(b.node(), t.frame, now);
            moved = true;
        }
        if !moved {
            break;
        }
    }
}

/// What the node's driver does with its endpoint's events (the wiring the
/// lead puts into anyhubd): publish takeover state, tombstone on delete.
fn publish(
    events: &[Event],
    ep: &Endpoint,
    bus: &mut Node,
    owner: u16,
    now: Instant,
    now_ms: u64,
) -> usize {
    let mut n = 0;
    let spis = |h: IkeSaHandle| {
        ep.ike_sas()
            .into_iter()
            .find(|i| i.handle == h)
            .map(|i| (i.spi_i, i.spi_r))
    };
    for e in events {
        let p = match e {
            Event::IkeSaUpdated(h) => {
                let s = ep.export_ike_sa(now, *h).expect("exportable");
                let exp = convert::ike_state_expiry_ms(&s, now_ms, 86_400_000);
                Some(convert::publish_ike_state(&s, owner, exp))
            }
            other => convert::publish_for(other, spis, owner, now_ms),
        };
        match p {
            Some(Publish::Write {
                key,
                body,
                expires_ms,
            }) => {
                bus.publish(key, *body, expires_ms, now_ms).unwrap();
                n += 1;
            }
            Some(Publish::Delete(k)) => {
                let _ = bus.delete(k, now_ms);
            }
            Some(Publish::DeleteChildrenOf { spi_i, spi_r }) => {
                n += bus.delete_children_of(spi_i, spi_r, now_ms);
            }
            Some(Publish::ReparentChildren { old, new }) => {
                bus.reparent_children(old, new, now_ms);
            }
            None => {}
        }
    }
    n
}

/// The newest IKE SA record node `bus` applied.
fn received_ike(bus: &mut Node) -> Option<pb::IkeSa> {
    let mut last = None;
    while let Some(e) = bus.poll_event() {
        if let anyhub_sa_sync::Event::Applied { record, .. } = e {
            if let Some(pb::record::Body::IkeSa(s)) = &record.body {
                last = Some(s.clone());
            }
        }
    }
    last
}

#[test]
fn node2_takes_the_ike_sa_over_from_the_bus() {
    let mut bus1 = Node::new(Config::new(1, 11));
    let mut bus2 = Node::new(Config::new(2, 22));
    bus1.add_peer(2);
    bus2.add_peer(1);
    bus1.set_bootstrapped();
    bus1.connected(2, NOW);
    bus2.connected(1, NOW);
    pump(&mut bus1, &mut bus2, NOW);

    let t0 = Instant::now();
    let (mut p, mut node1, mut node2) = (site(), hub(1, 1), hub(2, 2));
    p.initiate(t0, "hub", addr("192.0.2.9:500"), addr("192.0.2.1:500"))
        .unwrap();
    let ev = exchange(t0, &mut p, &mut node1);
    assert!(publish(&ev, &node1, &mut bus1, 1, t0, NOW) >= 1);
    // P checks liveness once with node 1: the state moves, is published.
    let t1 = t0 + Duration::from_secs(31);
    p.handle_timeout(t1);
    let ev = exchange(t1, &mut p, &mut node1);
    assert_eq!(publish(&ev, &node1, &mut bus1, 1, t1, NOW + 31_000), 1);
    pump(&mut bus1, &mut bus2, NOW + 31_000);

    // Node 1 dies. Node 2 adopts what the bus gave it.
    let rec = received_ike(&mut bus2).expect("node 2 holds the IKE SA record");
    assert_eq!(rec.owner, 1);
    assert_eq!(rec.next_msgid_recv, 3);
    let state = convert::ike_state_from_pb(&rec).unwrap();
    // What node 1 would export now, to the millisecond of the record.
    let fresh = node1.export_ike_sa(t1, node1.ike_sas()[0].handle).unwrap();
    assert!(convert::ike_state_to_pb(&fresh, 1) == rec);
    assert_eq!(state.keys, fresh.keys);
    drop(node1);
    let h2 = node2.adopt_ike_sa(t1, &state).unwrap();

    // P's next liveness check is answered by node 2, and P is content.
    let t2 = t1 + Duration::from_secs(31);
    p.handle_timeout(t2);
    let ev = exchange(t2, &mut p, &mut node2);
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::IkeSaUpdated(h) if *h == h2)));
    assert_eq!(p.counters().tx_retransmits, 0);
    assert_eq!(p.counters().rx_dropped, 0);
    assert_eq!(node2.counters().rx_decrypt_failed, 0);
    // Node 2 now owns the record.
    publish(&ev, &node2, &mut bus2, 2, t2, NOW + 62_000);
    pump(&mut bus1, &mut bus2, NOW + 62_000);
    let rec = received_ike(&mut bus1).expect("node 1's bus hears of the new owner");
    assert_eq!((rec.owner, rec.next_msgid_recv), (2, 4));

    // P deletes the IKE SA: node 2 handles it and the record is tombstoned.
    let ph = p.ike_sas()[0].handle;
    assert!(p.delete_ike_sa(t2, ph));
    let ev = exchange(t2, &mut p, &mut node2);
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::IkeSaDeleted {
            reason: SaEndReason::DeletedByPeer,
            ..
        }
    )));
    assert!(p.ike_sas().is_empty());
    assert!(publish(&ev, &node2, &mut bus2, 2, t2, NOW + 63_000) >= 1);
    pump(&mut bus1, &mut bus2, NOW + 63_000);
    let key = Key::IkeSa {
        spi_i: state.spi_i,
        spi_r: state.spi_r,
    };
    for bus in [&bus1, &bus2] {
        let e = bus.table().get(&key).expect("the key is known");
        assert!(
            e.is_tombstone(),
            "node {}: IKE SA record tombstoned",
            bus.node()
        );
    }
}
