//! IKE SA takeover in memory: a peer P (the customer's router, initiator)
//! establishes with hub node 1; node 1's exported state is adopted by hub
//! node 2 (same tunnel, other node index), and P's next exchanges go to
//! node 2 (anycast steered them there). Deterministic: seeded RNGs, a
//! virtual clock.

mod common;

use anyhub_crypto::Secret;
use anyhub_ike::takeover::{AdoptError, RequestKind, MSGID_RESYNC_WINDOW};
use anyhub_ike::{Endpoint, Event, IkeSaHandle, IkeSaState, IkeState, SaEndReason};
use common::*;
use std::sync::Arc;
use std::time::Duration;

/// P (node 9) with hub node 1 as `b`, established; hub node 2 waiting.
fn setup(site: TunnelSpec, hub: impl Fn() -> TunnelSpec) -> (Pair, Endpoint) {
    let mut p = Pair::new(endpoint(9, 11, &[site]), endpoint(1, 22, &[hub()]));
    p.initiate();
    p.drive_for(Duration::from_secs(1));
    assert!(p.established());
    (p, endpoint(2, 33, &[hub()]))
}

fn handle(e: &Endpoint) -> IkeSaHandle {
    let sas = e.ike_sas();
    assert_eq!(sas.len(), 1);
    sas[0].handle
}

/// Node 2 adopts `state` and takes node 1's place in the pair; node 1 is
/// returned (it is gone as far as P is concerned).
fn take_over(p: &mut Pair, mut node2: Endpoint, state: &IkeSaState) -> (Endpoint, IkeSaHandle) {
    let h = node2.adopt_ike_sa(p.now, state).expect("adopts");
    let node1 = std::mem::replace(&mut p.b, node2);
    p.b_events.clear();
    p.a_events.clear();
    (node1, h)
}

/// The AEAD IV (RFC 5282 §3) of an unfragmented SK message: after the IKE
/// header (28) and the SK generic header (4).
fn iv_of(msg: &[u8]) -> u64 {
    u64::from_be_bytes(msg[32..40].try_into().unwrap())
}

fn updates(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::IkeSaUpdated(_)))
        .count()
}

fn dpd_site() -> TunnelSpec {
    TunnelSpec {
        dpd: Some(30),
        ..TunnelSpec::site()
    }
}

#[test]
fn updates_follow_establishment_and_every_exchange() {
    let (mut p, _) = setup(dpd_site(), TunnelSpec::hub);
    let h = handle(&p.b);
    // Established: IkeSaEstablished, the first child, then the update.
    let kinds: Vec<&str> = p
        .b_events
        .iter()
        .map(|e| match e {
            Event::IkeSaEstablished(_) => "ike",
            Event::ChildSaEstablished(_) => "child",
            Event::IkeSaUpdated(x) if *x == h => "updated",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["ike", "child", "updated"]);
    let s0 = p.b.export_ike_sa(p.now, h).unwrap();
    assert_eq!((s0.next_peer_request_id, s0.next_request_id), (2, 0));
    // Nothing happens, nothing is announced.
    p.b_events.clear();
    p.drive_for(Duration::from_secs(10));
    assert_eq!(updates(&p.b_events), 0);
    // One liveness check of P's (due 30 s after establishment; the clock
    // only moves with timers): one update, message ID moved.
    p.drive_for(Duration::from_secs(35));
    assert_eq!(updates(&p.b_events), 1);
    let s1 = p.b.export_ike_sa(p.now, h).unwrap();
    assert_eq!(s1.next_peer_request_id, 3);
    assert_eq!(s1.last_response.as_ref().map(|r| r.msg_id), Some(2));
    assert_eq!(s1.children.len(), 1);
    // The initiator exports too (it would be another anyhub node).
    let ph = handle(&p.a);
    let ps = p.a.export_ike_sa(p.now, ph).unwrap();
    assert!(ps.initiator);
    assert_eq!(ps.next_request_id, 3);
    assert_eq!(p.b.export_ike_sa(p.now, IkeSaHandle(999)), None);
}

#[test]
fn node2_answers_dpd_child_rekey_and_delete_after_takeover() {
    let (mut p, node2) = setup(dpd_site(), TunnelSpec::hub);
    let h1 = handle(&p.b);
    let state = p.b.export_ike_sa(p.now, h1).unwrap();
    let (node1, h2) = take_over(&mut p, node2, &state);
    assert_eq!(p.b.counters().ike_sa_adopted, 1);
    // The new owner announces itself (it publishes).
    assert_eq!(
        p.b.poll_event()
            .map(|e| matches!(e, Event::IkeSaUpdated(x) if x == h2)),
        Some(true)
    );
    let info = &p.b.ike_sas()[0];
    assert_eq!((info.spi_i, info.spi_r), (state.spi_i, state.spi_r));
    assert_eq!(info.state, IkeState::Established);
    assert_eq!(&*info.tunnel.clone().unwrap(), "site-a");

    // 1. A liveness check from P, answered by node 2 and accepted by P.
    let p_before = p.a.counters().clone();
    let sent_before = p.sent.len();
    p.drive_for(Duration::from_secs(35));
    let from_node2: Vec<_> = p.sent[sent_before..]
        .iter()
        .filter(|(s, _)| *s == Side::B)
        .map(|(_, t)| t.payload.clone())
        .collect();
    assert!(!from_node2.is_empty(), "node 2 answered");
    let pc = p.a.counters();
    assert_eq!(pc.rx_decrypt_failed, p_before.rx_decrypt_failed);
    assert_eq!(pc.rx_dropped, p_before.rx_dropped);
    assert_eq!(
        pc.tx_retransmits, p_before.tx_retransmits,
        "P got its answers"
    );
    assert_eq!(
        p.b.export_ike_sa(p.now, h2).unwrap().next_peer_request_id,
        3
    );
    // Node 2's IVs start in a block of their own, above node 1's.
    let iv1 = node1.export_ike_sa(p.now, h1).unwrap().next_iv;
    for m in &from_node2 {
        assert!(iv_of(m) >= 1 << 32, "IV {:x} not jumped", iv_of(m));
        assert!(iv_of(m) > iv1);
    }

    // 2. P rekeys the child SA; node 2 answers and derives the same keys.
    let ph = handle(&p.a);
    let old = p.a.child_sas_of(ph)[0];
    assert!(p.a.rekey_child_sa(p.now, ph, old));
    p.drive_for(Duration::from_secs(1));
    let pa = Pair::children(&p.a_events);
    let pb = Pair::children(&p.b_events);
    assert_eq!((pa.len(), pb.len()), (1, 1), "one new child SA each side");
    let (ca, cb) = (pa[0], pb[0]);
    assert_eq!(ca.rekey_of, Some(old));
    assert_eq!(cb.rekey_of, Some(state.children[0].spi_in));
    assert_eq!(ca.spi_out, cb.spi_in);
    assert_eq!(ca.spi_in, cb.spi_out);
    assert_eq!(ca.keys_out.encr.as_bytes(), cb.keys_in.encr.as_bytes());
    assert_eq!(ca.keys_in.encr.as_bytes(), cb.keys_out.encr.as_bytes());
    // Node 2's new SPI carries its own node index; the old child is gone
    // on both sides (P's DELETE after its rekey, handled by node 2).
    assert_eq!(anyhub_ike::spi::esp_spi_owner(cb.spi_in), 2);
    assert!(p.b_events.iter().any(|e| matches!(e,
        Event::ChildSaDeleted { spi_in, .. } if *spi_in == state.children[0].spi_in)));
    assert_eq!(p.b.child_sas_of(h2), vec![cb.spi_in]);
    assert_eq!(p.a.child_sas_of(ph), vec![ca.spi_in]);

    // 3. P deletes the IKE SA; node 2 handles it.
    assert!(p.a.delete_ike_sa(p.now, ph));
    p.drive_for(Duration::from_secs(1));
    assert!(p.b.ike_sas().is_empty());
    assert!(p.a.ike_sas().is_empty());
    assert!(p.b_events.iter().any(|e| matches!(e,
        Event::IkeSaDeleted { info, reason: SaEndReason::DeletedByPeer } if info.handle == h2)));
    assert!(p.a_events.iter().any(|e| matches!(
        e,
        Event::IkeSaDeleted {
            reason: SaEndReason::DeletedLocally,
            ..
        }
    )));
}

/// Node 1 answered a request of P's after its last published state: node 2
/// adopts a stale snapshot, and P's next request (one ahead) is taken.
#[test]
fn stale_snapshot_resyncs_to_the_peers_next_request() {
    let (mut p, node2) = setup(dpd_site(), TunnelSpec::hub);
    let h1 = handle(&p.b);
    let stale = p.b.export_ike_sa(p.now, h1).unwrap();
    // Two liveness checks answered by node 1, never published.
    p.drive_for(Duration::from_secs(65));
    assert_eq!(
        p.b.export_ike_sa(p.now, h1).unwrap().next_peer_request_id,
        stale.next_peer_request_id + 2
    );
    let (_node1, h2) = take_over(&mut p, node2, &stale);
    let before = p.a.counters().clone();
    p.drive_for(Duration::from_secs(35));
    assert_eq!(p.b.counters().msgid_resyncs, 1);
    assert_eq!(p.a.counters().tx_retransmits, before.tx_retransmits);
    assert_eq!(
        p.b.export_ike_sa(p.now, h2).unwrap().next_peer_request_id,
        stale.next_peer_request_id + 3
    );
    // Afterwards strict again: P's following checks keep working.
    p.drive_for(Duration::from_secs(120));
    assert_eq!(p.b.counters().msgid_resyncs, 1);
    assert_eq!(p.a.counters().tx_retransmits, before.tx_retransmits);
    assert_eq!(p.a.ike_sas()[0].state, IkeState::Established);
}

/// A snapshot more than the window behind is not resynced: P's request is
/// dropped (strict RFC 7296 §2.2), P retransmits and finally gives up.
#[test]
fn snapshot_beyond_the_window_is_not_resynced() {
    let site = TunnelSpec {
        dpd: Some(1),
        ..TunnelSpec::site()
    };
    let (mut p, node2) = setup(site, TunnelSpec::hub);
    let h1 = handle(&p.b);
    let stale = p.b.export_ike_sa(p.now, h1).unwrap();
    // Exchanges completed by node 1 until the gap exceeds the window.
    while p.b.export_ike_sa(p.now, h1).unwrap().next_peer_request_id
        < stale.next_peer_request_id + MSGID_RESYNC_WINDOW
    {
        p.drive_for(Duration::from_millis(1100));
    }
    let (_node1, _) = take_over(&mut p, node2, &stale);
    p.drive_for(Duration::from_secs(10));
    assert_eq!(p.b.counters().msgid_resyncs, 0);
    assert!(p.b.counters().rx_dropped > 0);
    assert!(p.a.counters().tx_retransmits > 0);
}

/// Node 1 sent a liveness check, P answered, the answer was lost with
/// node 1. Node 2 retransmits the very request; P answers from its cache,
/// and both sides go on with the same next message ID.
#[test]
fn request_in_flight_is_retransmitted_by_the_new_owner() {
    let hub = || TunnelSpec {
        dpd: Some(30),
        ..TunnelSpec::hub()
    };
    let (mut p, node2) = setup(TunnelSpec::site(), hub);
    let h1 = handle(&p.b);
    p.now += Duration::from_secs(31);
    p.b.handle_timeout(p.now);
    let request = p.b.poll_transmit().expect("node 1 checks liveness");
    while p.b.poll_event().is_some() {}
    p.deliver(Side::B, request);
    let answer = p.a.poll_transmit().expect("P answers");
    drop(answer); // lost with node 1
    let state = p.b.export_ike_sa(p.now, h1).unwrap();
    let o = state.outstanding.as_ref().expect("request in flight");
    assert_eq!(o.kind, RequestKind::Dpd);
    assert_eq!(state.next_request_id, o.msg_id + 1);
    let (_node1, h2) = take_over(&mut p, node2, &state);
    p.drive_for(Duration::from_secs(1));
    assert_eq!(
        p.a.counters().rx_retransmits,
        1,
        "P answered from its cache"
    );
    assert_eq!(p.b.counters().tx_retransmits, 1);
    assert!(p.b.export_ike_sa(p.now, h2).unwrap().outstanding.is_none());
    // Node 2's own next check uses the next ID, which P accepts.
    let dropped = p.a.counters().rx_dropped;
    p.drive_for(Duration::from_secs(65));
    assert_eq!(p.a.counters().rx_dropped, dropped);
    assert_eq!(p.b.counters().tx_retransmits, 1);
    assert_eq!(
        p.b.export_ike_sa(p.now, h2).unwrap().next_request_id,
        state.next_request_id + 2
    );
}

#[test]
fn bad_states_are_refused_with_typed_errors() {
    let (p, mut node2) = setup(TunnelSpec::site(), TunnelSpec::hub);
    let good = p.b.export_ike_sa(p.now, handle(&p.b)).unwrap();
    let refuse = |node2: &mut Endpoint, s: &IkeSaState| node2.adopt_ike_sa(p.now, s).unwrap_err();

    let mut s = good.clone();
    s.tunnel = Arc::from("no-such-tunnel");
    assert_eq!(
        refuse(&mut node2, &s),
        AdoptError::UnknownTunnel("no-such-tunnel".into())
    );

    let mut s = good.clone();
    s.remote_id = anyhub_ike::Identity::parse("mallory.example.net").unwrap();
    assert!(matches!(
        refuse(&mut node2, &s),
        AdoptError::IdentityMismatch(_)
    ));

    let mut s = good.clone();
    s.keys.sk_er = Secret::from_slice(&[1; 3]);
    assert_eq!(refuse(&mut node2, &s), AdoptError::KeyLength("SK_er"));

    let mut s = good.clone();
    s.keys.sk_d = Secret::from_slice(&[]);
    assert_eq!(refuse(&mut node2, &s), AdoptError::KeyLength("SK_d"));

    let mut s = good.clone();
    s.proposal.encr.key_bits = 77;
    assert!(matches!(refuse(&mut node2, &s), AdoptError::Proposal(_)));

    let mut s = good.clone();
    s.spi_r = 0;
    assert_eq!(refuse(&mut node2, &s), AdoptError::ZeroSpi);

    let mut s = good.clone();
    let r = s.last_response.as_mut().unwrap();
    r.msg_id += 5;
    assert!(matches!(refuse(&mut node2, &s), AdoptError::MessageIds(_)));

    let mut s = good.clone();
    s.outstanding = Some(anyhub_ike::takeover::OutstandingRequest {
        msg_id: 7,
        datagrams: vec![vec![0; 40]],
        kind: RequestKind::Dpd,
    });
    assert!(matches!(refuse(&mut node2, &s), AdoptError::MessageIds(_)));

    // Nothing was half-installed by the refusals; the good one goes in
    // once, a second time its SPI is taken.
    assert!(node2.ike_sas().is_empty());
    node2.adopt_ike_sa(p.now, &good).unwrap();
    assert_eq!(refuse(&mut node2, &good), AdoptError::SpiInUse(good.spi_r));
    assert_eq!(node2.ike_sas().len(), 1);
}

/// Garbage in every field a decoder might hand us: errors or a working
/// SA, never a panic.
#[test]
fn garbage_states_never_panic() {
    let (p, _) = setup(TunnelSpec::site(), TunnelSpec::hub);
    let good = p.b.export_ike_sa(p.now, handle(&p.b)).unwrap();
    let mut rng = anyhub_crypto::SeededRng::new(5);
    use anyhub_crypto::Rng;
    for i in 0..300u32 {
        let mut node2 = endpoint(2, u64::from(i), &[TunnelSpec::hub()]);
        let mut s = good.clone();
        let mut b = [0u8; 16];
        rng.fill(&mut b);
        let len = usize::from(b[0] % 64);
        match b[1] % 8 {
            0 => s.keys.sk_ei = Secret::from_slice(&vec![b[2]; len]),
            1 => s.next_peer_request_id = u32::from_be_bytes(b[2..6].try_into().unwrap()),
            2 => s.next_request_id = u32::from_be_bytes(b[2..6].try_into().unwrap()),
            3 => s.next_iv = u64::from_be_bytes(b[2..10].try_into().unwrap()),
            4 => s.proposal.prf = Some(anyhub_ike::wire::PrfId(u16::from(b[2]))),
            5 => s.children[0].expire_at = std::time::UNIX_EPOCH,
            6 => s.last_response.as_mut().unwrap().datagrams = vec![b[..len % 16].to_vec()],
            _ => {
                s.established_at =
                    std::time::UNIX_EPOCH + Duration::from_secs(u64::from(b[3]) << 40)
            }
        }
        if let Ok(h) = node2.adopt_ike_sa(p.now, &s) {
            // Whatever got in runs its timers without panicking.
            node2.handle_timeout(p.now + Duration::from_secs(7200));
            let _ = node2.export_ike_sa(p.now, h);
        }
    }
}

#[test]
fn debug_of_the_state_shows_no_key_bytes() {
    let (p, _) = setup(TunnelSpec::site(), TunnelSpec::hub);
    let s = p.b.export_ike_sa(p.now, handle(&p.b)).unwrap();
    let text = format!("{s:?} {:?} {:?}", s.keys, s.last_response);
    for k in [
        &s.keys.sk_d,
        &s.keys.sk_ei,
        &s.keys.sk_er,
        &s.keys.sk_pi,
        &s.keys.sk_pr,
    ] {
        let b = k.as_bytes();
        assert!(b.len() >= 8);
        assert!(!text.contains(&format!("{:?}", &b[..4]).trim_end_matches(']').to_string()));
        assert!(!text.contains(&hex::encode(&b[..4])));
    }
    assert!(text.contains("redacted"));
    assert!(text.contains("site-a"));
}

/// After the takeover P rekeys the IKE SA itself (RFC 7296 §2.18): node 2
/// derives the new keys from the adopted SK_d, moves the child SA to the
/// new SA and announces the new SA's state; the old one is not exportable.
#[test]
fn ike_rekey_after_takeover_is_answered_and_announced() {
    let (mut p, node2) = setup(TunnelSpec::site(), TunnelSpec::hub);
    let h1 = handle(&p.b);
    let state = p.b.export_ike_sa(p.now, h1).unwrap();
    let (_node1, h2) = take_over(&mut p, node2, &state);
    let ph = handle(&p.a);
    let child = p.a.child_sas_of(ph)[0];
    assert!(p.a.rekey_ike_sa(p.now, ph));
    p.drive_for(Duration::from_secs(1));
    let new = p
        .b_events
        .iter()
        .find_map(|e| match e {
            Event::IkeSaRekeyed { old, new } if *old == h2 => Some(new.handle),
            _ => None,
        })
        .expect("node 2 rekeyed the adopted SA");
    let rekeyed_at = p
        .b_events
        .iter()
        .position(|e| matches!(e, Event::IkeSaRekeyed { .. }))
        .unwrap();
    assert!(p.b_events[rekeyed_at..]
        .iter()
        .any(|e| matches!(e, Event::IkeSaUpdated(h) if *h == new)));
    assert!(p.b_events.iter().any(|e| matches!(e,
        Event::IkeSaDeleted { info, reason: SaEndReason::DeletedByPeer } if info.handle == h2)));
    let s = p.b.export_ike_sa(p.now, new).unwrap();
    assert_ne!((s.spi_i, s.spi_r), (state.spi_i, state.spi_r));
    assert_ne!(s.keys.sk_d, state.keys.sk_d);
    assert_eq!(s.children.len(), 1);
    assert_eq!(p.b.export_ike_sa(p.now, h2), None, "the old SA is gone");
    // The new IKE SA works: P rekeys the child SA over it.
    let ph = handle(&p.a);
    assert!(p.a.rekey_child_sa(p.now, ph, child));
    p.drive_for(Duration::from_secs(1));
    assert_eq!(p.a.child_sas_of(ph).len(), 1);
    assert_ne!(p.a.child_sas_of(ph)[0], child);
    assert_eq!(p.a.counters().tx_retransmits, 0);
}

/// The hub side starts exchanges too: node 2's own liveness checks and its
/// DELETE of the IKE SA reach P with message IDs P expects.
#[test]
fn node2_initiates_on_the_adopted_sa() {
    let hub = || TunnelSpec {
        dpd: Some(30),
        ..TunnelSpec::hub()
    };
    let (mut p, node2) = setup(TunnelSpec::site(), hub);
    // Node 1 checks liveness twice first (its request IDs move).
    p.drive_for(Duration::from_secs(65));
    let h1 = handle(&p.b);
    let state = p.b.export_ike_sa(p.now, h1).unwrap();
    assert_eq!(state.next_request_id, 2);
    let (_node1, h2) = take_over(&mut p, node2, &state);
    let dropped = p.a.counters().rx_dropped;
    p.drive_for(Duration::from_secs(65));
    assert_eq!(p.a.counters().rx_dropped, dropped);
    assert_eq!(p.b.counters().tx_retransmits, 0);
    assert!(p.b.export_ike_sa(p.now, h2).unwrap().next_request_id >= 4);
    assert!(p.b.delete_ike_sa(p.now, h2));
    p.drive_for(Duration::from_secs(1));
    assert!(p.a.ike_sas().is_empty());
    assert!(p.b.ike_sas().is_empty());
    assert!(p.a_events.iter().any(|e| matches!(
        e,
        Event::IkeSaDeleted {
            reason: SaEndReason::DeletedByPeer,
            ..
        }
    )));
}

/// Node 1 learns that node 2 took the SA over and releases its copy: the
/// SA is gone without a DELETE, an event or a timer (no DPD, no rekey from
/// the stale copy), and SPI lookup finds it only where it lives.
#[test]
fn the_old_owner_releases_silently() {
    let (mut p, node2) = setup(dpd_site(), TunnelSpec::hub);
    let h1 = handle(&p.b);
    let info = p.b.ike_sas()[0].clone();
    assert_eq!(p.b.ike_sa_by_spis(info.spi_i, info.spi_r), Some(h1));
    assert_eq!(p.b.ike_sa_by_spis(info.spi_i, info.spi_r ^ 1), None);
    assert_eq!(p.b.ike_sa_by_spis(info.spi_r, info.spi_i), None);
    let state = p.b.export_ike_sa(p.now, h1).unwrap();
    let (mut node1, h2) = take_over(&mut p, node2, &state);
    assert_eq!(p.b.ike_sa_by_spis(info.spi_i, info.spi_r), Some(h2));
    while node1.poll_event().is_some() {}
    while node1.poll_transmit().is_some() {}
    assert!(node1.release_ike_sa(h1));
    assert!(!node1.release_ike_sa(h1), "released once");
    assert!(node1.ike_sas().is_empty());
    assert_eq!(node1.ike_sa_by_spis(info.spi_i, info.spi_r), None);
    assert_eq!(node1.poll_timeout(), None, "no timer of the released SA");
    assert!(node1.poll_event().is_none() && node1.poll_transmit().is_none());
}
