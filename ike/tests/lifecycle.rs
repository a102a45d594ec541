//! A tunnel's whole life in the pair simulator: child SA and IKE SA rekeys
//! started by either side (with and without PFS), make-before-break,
//! hours of virtual time with both sides rekeying, liveness checks and a
//! peer that vanishes.

mod common;

use anyhub_ike::config::DpdAction;
use anyhub_ike::{ChildSa, Event, IkeState, SaEndReason};
use common::*;
use std::collections::HashMap;
use std::time::Duration;

fn rekeyed_children(events: &[Event]) -> Vec<&ChildSa> {
    Pair::children(events)
        .into_iter()
        .filter(|c| c.rekey_of.is_some())
        .collect()
}

/// The child SAs each side holds now: (spi_in, spi_out) pairs, from the
/// events (established minus deleted).
fn live_children(events: &[Event]) -> HashMap<u32, ChildSa> {
    let mut live = HashMap::new();
    for e in events {
        match e {
            Event::ChildSaEstablished(c) => {
                live.insert(c.spi_in, (**c).clone());
            }
            Event::ChildSaDeleted { spi_in, .. } => {
                live.remove(spi_in);
            }
            _ => {}
        }
    }
    live
}

/// Every live child on one side has its mirror on the other, with the same keys.
fn assert_children_mirror(p: &Pair) -> usize {
    let a = live_children(&p.a_events);
    let b = live_children(&p.b_events);
    assert_eq!(a.len(), b.len(), "same number of live child SAs");
    for c in a.values() {
        let m = b.get(&c.spi_out).expect("mirror child on B");
        assert_eq!(m.spi_out, c.spi_in);
        assert_eq!(c.keys_out.encr.as_bytes(), m.keys_in.encr.as_bytes());
        assert_eq!(c.keys_in.encr.as_bytes(), m.keys_out.encr.as_bytes());
    }
    a.len()
}

fn up(p: &Pair) -> (usize, usize) {
    let n = |e: &anyhub_ike::Endpoint| {
        e.ike_sas()
            .iter()
            .filter(|s| s.state == IkeState::Established)
            .count()
    };
    (n(&p.a), n(&p.b))
}

#[test]
fn child_rekey_by_initiator_is_make_before_break() {
    let site = TunnelSpec {
        child_lifetime: 60,
        ..TunnelSpec::site()
    };
    let mut p = Pair::new(
        endpoint(1, 1, &[site]),
        endpoint(2, 2, &[TunnelSpec::hub()]),
    );
    p.initiate();
    p.drive_for(Duration::from_secs(1));
    let first = Pair::children(&p.a_events)[0].spi_in;
    p.drive_for(Duration::from_secs(61));
    let re = rekeyed_children(&p.a_events);
    assert_eq!(re.len(), 1, "one rekey within the lifetime");
    assert_eq!(re[0].rekey_of, Some(first));
    // The new SA was announced before the old one was deleted, on both sides.
    for evs in [&p.a_events, &p.b_events] {
        let new_at = evs
            .iter()
            .position(|e| matches!(e, Event::ChildSaEstablished(c) if c.rekey_of.is_some()))
            .unwrap();
        let del_at = evs
            .iter()
            .position(|e| matches!(e, Event::ChildSaDeleted { .. }))
            .unwrap();
        assert!(new_at < del_at, "make-before-break");
    }
    assert_eq!(assert_children_mirror(&p), 1);
    assert_eq!(up(&p), (1, 1));
}

#[test]
fn child_rekey_by_responder_with_pfs() {
    let hub = TunnelSpec {
        child_lifetime: 60,
        esp: &["aes256gcm16-x25519"],
        ..TunnelSpec::hub()
    };
    let site = TunnelSpec {
        esp: &["aes256gcm16-x25519"],
        ..TunnelSpec::site()
    };
    let mut p = Pair::new(endpoint(1, 1, &[site]), endpoint(2, 2, &[hub]));
    p.initiate();
    p.drive_for(Duration::from_secs(61));
    let re = rekeyed_children(&p.b_events);
    assert_eq!(re.len(), 1);
    assert_eq!(
        re[0].proposal.dh,
        Some(anyhub_ike::wire::registry::DhId::CURVE25519),
        "PFS on rekey"
    );
    let old = &Pair::children(&p.b_events)[0];
    assert_ne!(old.keys_in.encr.as_bytes(), re[0].keys_in.encr.as_bytes());
    assert_eq!(assert_children_mirror(&p), 1);
}

#[test]
fn pfs_group_mismatch_is_fixed_by_invalid_ke() {
    let site = TunnelSpec {
        child_lifetime: 60,
        esp: &["aes256gcm16-x25519-ecp256"],
        ..TunnelSpec::site()
    };
    let hub = TunnelSpec {
        esp: &["aes256gcm16-ecp256"],
        ..TunnelSpec::hub()
    };
    let mut p = Pair::new(endpoint(1, 1, &[site]), endpoint(2, 2, &[hub]));
    p.initiate();
    p.drive_for(Duration::from_secs(61));
    let re = rekeyed_children(&p.a_events);
    assert_eq!(re.len(), 1);
    assert_eq!(
        re[0].proposal.dh,
        Some(anyhub_ike::wire::registry::DhId::ECP256)
    );
    assert_eq!(assert_children_mirror(&p), 1);
}

#[test]
fn ike_rekey_by_either_side_moves_the_children() {
    for by_site in [true, false] {
        let (site, hub) = if by_site {
            (
                TunnelSpec {
                    ike_lifetime: 120,
                    ..TunnelSpec::site()
                },
                TunnelSpec::hub(),
            )
        } else {
            (
                TunnelSpec::site(),
                TunnelSpec {
                    ike_lifetime: 120,
                    ..TunnelSpec::hub()
                },
            )
        };
        let mut p = Pair::new(endpoint(1, 1, &[site]), endpoint(2, 2, &[hub]));
        p.initiate();
        p.drive_for(Duration::from_secs(1));
        let old = p.b.ike_sas()[0].clone();
        p.drive_for(Duration::from_secs(130));
        for evs in [&p.a_events, &p.b_events] {
            assert_eq!(
                evs.iter()
                    .filter(|e| matches!(e, Event::IkeSaRekeyed { .. }))
                    .count(),
                1
            );
            assert!(evs.iter().any(|e| matches!(
                e,
                Event::IkeSaDeleted {
                    reason: SaEndReason::Rekeyed,
                    ..
                } | Event::IkeSaDeleted {
                    reason: SaEndReason::DeletedByPeer,
                    ..
                }
            )));
            assert!(
                !evs.iter()
                    .any(|e| matches!(e, Event::ChildSaDeleted { .. })),
                "children survive an IKE rekey"
            );
        }
        let sas = p.b.ike_sas();
        assert_eq!(
            sas.len(),
            1,
            "only the new IKE SA is left (by_site={by_site})"
        );
        assert_ne!((sas[0].spi_i, sas[0].spi_r), (old.spi_i, old.spi_r));
        assert_eq!(
            sas[0].initiator, !by_site,
            "who rekeyed is the new SA's initiator"
        );
        assert_eq!(up(&p), (1, 1));
        // The new IKE SA works: a child rekey runs over it.
        p.drive_for(Duration::from_secs(3600));
        assert!(
            !rekeyed_children(&p.a_events).is_empty() || !rekeyed_children(&p.b_events).is_empty()
        );
        assert_eq!(assert_children_mirror(&p), 1);
    }
}

/// Ten virtual hours with equal lifetimes on both sides: rekeys of both
/// kinds from both sides, sometimes at once. At the end exactly one IKE SA
/// each and mirrored child SAs, no leaks.
#[test]
fn ten_hours_of_rekeys_from_both_sides_converge() {
    for seed in 0..8u64 {
        let site = TunnelSpec {
            ike_lifetime: 1800,
            child_lifetime: 600,
            dpd: Some(30),
            ..TunnelSpec::site()
        };
        let hub = TunnelSpec {
            ike_lifetime: 1800,
            child_lifetime: 600,
            dpd: Some(30),
            ..TunnelSpec::hub()
        };
        let mut p = Pair::new(endpoint(1, seed, &[site]), endpoint(2, 1000 + seed, &[hub]));
        p.initiate();
        p.drive_for(Duration::from_secs(10 * 3600));
        assert_eq!(up(&p), (1, 1), "seed {seed}");
        assert_eq!(
            (p.a.ike_sas().len(), p.b.ike_sas().len()),
            (1, 1),
            "no leaked IKE SAs, seed {seed}"
        );
        let n = assert_children_mirror(&p);
        assert!((1..=2).contains(&n), "seed {seed}: {n} live child SAs");
        assert!(rekeyed_children(&p.a_events).len() + rekeyed_children(&p.b_events).len() >= 50);
    }
}

#[test]
fn liveness_checks_keep_an_idle_tunnel() {
    let site = TunnelSpec {
        dpd: Some(30),
        ..TunnelSpec::site()
    };
    let mut p = Pair::new(
        endpoint(1, 1, &[site]),
        endpoint(2, 2, &[TunnelSpec::hub()]),
    );
    p.initiate();
    p.drive_for(Duration::from_secs(1));
    let before = p.sent.len();
    p.drive_for(Duration::from_secs(300));
    assert_eq!(up(&p), (1, 1));
    let checks = p.sent.len() - before;
    assert!(
        (18..=22).contains(&checks),
        "about one request and one answer per 30 s, got {checks}"
    );
}

#[test]
fn vanished_peer_is_cleared_with_its_children() {
    let site = TunnelSpec {
        dpd: Some(30),
        ..TunnelSpec::site()
    };
    let mut p = Pair::new(
        endpoint(1, 1, &[site]),
        endpoint(2, 2, &[TunnelSpec::hub()]),
    );
    p.initiate();
    p.drive_for(Duration::from_secs(1));
    p.loss = Box::new(|_, _, _| true); // the hub is gone
    p.drive_for(Duration::from_secs(600));
    assert!(p.a.ike_sas().is_empty());
    assert!(p.a_events.iter().any(|e| matches!(
        e,
        Event::IkeSaDeleted {
            reason: SaEndReason::Timeout,
            ..
        }
    )));
    assert!(p
        .a_events
        .iter()
        .any(|e| matches!(e, Event::ChildSaDeleted { .. })));
}

#[test]
fn vanished_peer_with_restart_comes_back() {
    let site = TunnelSpec {
        dpd: Some(30),
        dpd_action: DpdAction::Restart,
        ..TunnelSpec::site()
    };
    let mut p = Pair::new(
        endpoint(1, 1, &[site]),
        endpoint(2, 2, &[TunnelSpec::hub()]),
    );
    p.initiate();
    p.drive_for(Duration::from_secs(1));
    let lost_from = p.sent.len();
    p.loss = Box::new(move |i, _, _| i < lost_from + 8); // an outage of a few datagrams
    p.drive_for(Duration::from_secs(2000));
    assert!(p.a_events.iter().any(|e| matches!(
        e,
        Event::IkeSaDeleted {
            reason: SaEndReason::Timeout,
            ..
        }
    )));
    let a_up =
        p.a.ike_sas()
            .iter()
            .filter(|s| s.state == IkeState::Established)
            .count();
    assert_eq!(a_up, 1, "the site restarted the tunnel");
    assert!(p
        .b
        .ike_sas()
        .iter()
        .any(|s| s.state == IkeState::Established));
}
