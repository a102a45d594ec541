//! The wiring path end to end, in memory: an IKE `ChildSaEstablished` on
//! node 1 becomes a record ([`convert::publish_for`]), travels to node 2
//! through the core, and node 2's event installs it into the real SA
//! database ([`convert::dataplane_event`] → `Sad::handle_event`); the
//! delete removes it again.

use anyhub_crypto::Secret;
use anyhub_dataplane::sad::{Change, Sad, SadConfig};
use anyhub_ike::proposal::EncrAlg;
use anyhub_ike::wire::{EncrId, ProtocolId, TrafficSelector, TsType};
use anyhub_ike::{ChildSa, DirectionKeys, IkeSaHandle, Selected};
use anyhub_sa_sync::convert::{self, Publish};
use anyhub_sa_sync::{Config, Node};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NOW: u64 = 1_700_000_000_000;

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

fn child() -> ChildSa {
    let ts = |a: &str, b: &str| TrafficSelector {
        ty: TsType(7),
        ip_protocol: 0,
        start_port: 0,
        end_port: 65535,
        start_addr: a.parse().unwrap(),
        end_addr: b.parse().unwrap(),
    };
    ChildSa {
        tunnel: Arc::from("site-a"),
        ike: IkeSaHandle(1),
        spi_in: 0x0010_0005,
        spi_out: 0xc0de_0001,
        proposal: Selected {
            protocol: ProtocolId::ESP,
            num: 1,
            encr: EncrAlg {
                id: EncrId::AES_GCM_16,
                key_bits: 256,
            },
            prf: None,
            integ: None,
            dh: None,
            esn: false,
            peer_spi: vec![0xc0, 0xde, 0, 1],
        },
        keys_in: DirectionKeys {
            encr: Secret::from_slice(&[1; 36]),
            integ: None,
        },
        keys_out: DirectionKeys {
            encr: Secret::from_slice(&[2; 36]),
            integ: None,
        },
        local_ts: vec![ts("10.0.0.0", "10.0.255.255")],
        remote_ts: vec![ts("10.1.0.0", "10.1.255.255")],
        lifetime: Duration::from_secs(3600),
        local: "192.0.2.1:4500".parse().unwrap(),
        remote: "198.51.100.7:4500".parse().unwrap(),
        encap: true,
        rekey_of: None,
    }
}

/// Nodes 1 and 2 connected; node 1 published [`child`] under IKE SA
/// (0xaa, 0xbb) and node 2 applied it. Returns them and the SPI.
fn two_nodes_with_a_child() -> (Node, Node, u32) {
    let mut n1 = Node::new(Config::new(1, 11));
    let mut n2 = Node::new(Config::new(2, 22));
    n1.add_peer(2);
    n2.add_peer(1);
    n1.set_bootstrapped();
    n1.connected(2, NOW);
    n2.connected(1, NOW);
    pump(&mut n1, &mut n2, NOW);
    let c = child();
    let spi = c.spi_in;
    let ev = anyhub_ike::Event::ChildSaEstablished(Box::new(c));
    let Some(Publish::Write {
        key,
        body,
        expires_ms,
    }) = convert::publish_for(&ev, |_| Some((0xaa, 0xbb)), 1, NOW)
    else {
        panic!("a write");
    };
    n1.publish(key, *body, expires_ms, NOW).unwrap();
    pump(&mut n1, &mut n2, NOW);
    (n1, n2, spi)
}

#[test]
fn ike_event_to_record_to_sad() {
    let (mut n1, mut n2, spi) = two_nodes_with_a_child();

    let sad = Sad::new(SadConfig::new(2));
    let now = Instant::now();
    let mut changes = Vec::new();
    while let Some(e) = n2.poll_event() {
        if let Some(ev) = convert::dataplane_event(&e) {
            changes.push(sad.handle_event(now, ev.unwrap()));
        }
    }
    assert!(
        matches!(changes.as_slice(), [Change::Installed { spi_in, replaced: false }] if *spi_in == spi),
        "{changes:?}"
    );
    assert!(sad.contains(spi));

    // The IKE SA goes away on node 1: its children are tombstoned, and node
    // 2's SA database drops them.
    assert_eq!(n1.delete_children_of(0xaa, 0xbb, NOW + 1), 1);
    pump(&mut n1, &mut n2, NOW + 1);
    let mut changes = Vec::new();
    while let Some(e) = n2.poll_event() {
        if let Some(ev) = convert::dataplane_event(&e) {
            changes.push(sad.handle_event(now, ev.unwrap()));
        }
    }
    assert!(
        matches!(changes.as_slice(), [Change::Removed(1)]),
        "{changes:?}"
    );
    assert!(!sad.contains(spi));
}

/// An IKE SA rekey (RFC 7296 §2.18) moves the children: node 1 re-writes
/// them under the new IKE SA's SPIs, so the old IKE SA's delete leaves them
/// alive on node 2, whose SA database keeps the same SA (counters and
/// all) now under the new IKE SA's handle; the new IKE SA's delete then
/// removes them.
#[test]
fn ike_rekey_reparents_children_before_the_old_ike_sa_goes() {
    let (mut n1, mut n2, spi) = two_nodes_with_a_child();
    let sad = Sad::new(SadConfig::new(2));
    let now = Instant::now();
    let drain = |n2: &mut Node| {
        let mut changes = Vec::new();
        while let Some(e) = n2.poll_event() {
            if let Some(ev) = convert::dataplane_event(&e) {
                changes.push(sad.handle_event(now, ev.unwrap()));
            }
        }
        changes
    };
    drain(&mut n2);
    assert!(sad.contains(spi));

    assert_eq!(n1.reparent_children((0xaa, 0xbb), (0xcc, 0xdd), NOW + 1), 1);
    assert_eq!(
        n1.delete_children_of(0xaa, 0xbb, NOW + 2),
        0,
        "nothing left under the old SA"
    );
    pump(&mut n1, &mut n2, NOW + 2);
    let changes = drain(&mut n2);
    assert!(
        matches!(
            changes.as_slice(),
            [Change::Installed { replaced: true, .. }]
        ),
        "the same SA again, not a new one: {changes:?}"
    );
    let moved = convert::remote_handle(0xcc, 0xdd);
    assert_eq!(sad.read(|s| s.inbound(spi).map(|c| c.ike)), Some(moved));
    assert_eq!(n1.delete_children_of(0xcc, 0xdd, NOW + 3), 1);
    pump(&mut n1, &mut n2, NOW + 3);
    drain(&mut n2);
    assert!(!sad.contains(spi));
}
