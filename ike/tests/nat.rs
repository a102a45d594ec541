//! NAT traversal (RFC 7296 §2.23, RFC 3948) in the pair simulator: the side
//! behind the NAT keeps its mapping alive with keepalives; when the NAT
//! gives it a new mapping, the other side follows it (and says so), while
//! without a NAT an address change is not followed.

mod common;

use anyhub_ike::{Event, Transmit};
use common::*;
use std::time::Duration;

fn moved(events: &[Event]) -> Vec<std::net::SocketAddr> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::IkeSaMoved { remote, .. } => Some(*remote),
            _ => None,
        })
        .collect()
}

#[test]
fn behind_a_nat_keepalives_flow_every_20_s() {
    let mut p = Pair::standard();
    p.nat = true;
    p.initiate();
    p.drive_for(Duration::from_secs(1));
    assert!(p.established());
    p.drive_for(Duration::from_secs(100));
    // Only the side behind the NAT sends them.
    assert!((4..=6).contains(&p.keepalives[0]), "{:?}", p.keepalives);
    assert_eq!(p.keepalives[1], 0);
    assert_eq!(p.a.counters().tx_keepalives as usize, p.keepalives[0]);
}

#[test]
fn no_keepalives_without_a_nat() {
    let mut p = Pair::standard();
    p.initiate();
    p.drive_for(Duration::from_secs(100));
    assert_eq!(p.keepalives, [0, 0]);
}

#[test]
fn a_new_nat_mapping_is_followed_and_announced() {
    let mut p = Pair::standard();
    p.nat = true;
    p.initiate();
    p.drive_for(Duration::from_secs(1));
    assert_eq!(p.b.ike_sas()[0].remote, addr(NAT_IP, 14500));
    // The NAT forgets the mapping and picks another port.
    p.nat_base = 20_000;
    let (ha, hb) = (p.a.ike_sas()[0].handle, p.b.ike_sas()[0].handle);
    // A message from the site (a child rekey) comes from the new mapping.
    let child = p.a.child_sas_of(ha)[0];
    assert!(p.a.rekey_child_sa(p.now, ha, child));
    p.drive_for(Duration::from_secs(5));
    assert_eq!(p.b.ike_sas()[0].remote, addr(NAT_IP, 24500));
    assert_eq!(moved(&p.b_events), vec![addr(NAT_IP, 24500)]);
    // Child SAs established from now on carry the new address.
    let child = p.b.child_sas_of(hb)[0];
    assert!(p.b.rekey_child_sa(p.now, hb, child));
    p.drive_for(Duration::from_secs(5));
    let last = Pair::children(&p.b_events).last().copied().unwrap();
    assert_eq!(last.remote, addr(NAT_IP, 24500));
    assert!(p.established());
}

#[test]
fn without_a_nat_a_new_address_is_not_followed() {
    let mut p = Pair::standard();
    p.initiate();
    p.drive_for(Duration::from_secs(1));
    let (ha, hb) = (p.a.ike_sas()[0].handle, p.b.ike_sas()[0].handle);
    let child = p.a.child_sas_of(ha)[0];
    assert!(p.a.rekey_child_sa(p.now, ha, child));
    // Deliver A's authenticated request as if from another address.
    let t: Transmit = p.a.poll_transmit().unwrap();
    let elsewhere = addr("192.0.2.77", 500);
    p.b.handle(p.now, t.remote, elsewhere, &t.payload);
    assert_eq!(p.b.counters().rx_address_ignored, 1);
    assert_eq!(p.b.ike_sas()[0].remote, addr(A_IP, 500));
    assert!(moved(&p.b_events).is_empty());
    let _ = hb;
    p.drive_for(Duration::from_secs(5));
    assert!(p.established());
}
