//! IKE fragmentation (RFC 7383) in the pair simulator: a large IKE_AUTH in
//! both directions goes as fragments and comes together; a lost fragment is
//! recovered by retransmission; a side that did not announce support gets
//! whole messages; forged fragments are refused before they are kept.

mod common;

use anyhub_ike::wire::{Encrypted, Message};
use anyhub_ike::EndpointConfig;
use common::*;

/// 24 selectors a side: an IKE_AUTH of about 1 KiB with a PSK.
const SITE_NETS: &[&str] = &[
    "10.10.0.0/24",
    "10.10.1.0/24",
    "10.10.2.0/24",
    "10.10.3.0/24",
    "10.10.4.0/24",
    "10.10.5.0/24",
    "10.10.6.0/24",
    "10.10.7.0/24",
    "10.10.8.0/24",
    "10.10.9.0/24",
    "10.10.10.0/24",
    "10.10.11.0/24",
    "10.10.12.0/24",
    "10.10.13.0/24",
    "10.10.14.0/24",
    "10.10.15.0/24",
    "10.10.16.0/24",
    "10.10.17.0/24",
    "10.10.18.0/24",
    "10.10.19.0/24",
    "10.10.20.0/24",
    "10.10.21.0/24",
    "10.10.22.0/24",
    "10.10.23.0/24",
];
const HUB_NETS: &[&str] = &[
    "10.20.0.0/24",
    "10.20.1.0/24",
    "10.20.2.0/24",
    "10.20.3.0/24",
    "10.20.4.0/24",
    "10.20.5.0/24",
    "10.20.6.0/24",
    "10.20.7.0/24",
    "10.20.8.0/24",
    "10.20.9.0/24",
    "10.20.10.0/24",
    "10.20.11.0/24",
    "10.20.12.0/24",
    "10.20.13.0/24",
    "10.20.14.0/24",
    "10.20.15.0/24",
    "10.20.16.0/24",
    "10.20.17.0/24",
    "10.20.18.0/24",
    "10.20.19.0/24",
    "10.20.20.0/24",
    "10.20.21.0/24",
    "10.20.22.0/24",
    "10.20.23.0/24",
];

fn big(fragment_size: u16, a_frag: bool, b_frag: bool) -> Pair {
    let site = TunnelSpec {
        local_ts: SITE_NETS,
        remote_ts: HUB_NETS,
        ..TunnelSpec::site()
    };
    let hub = TunnelSpec {
        local_ts: HUB_NETS,
        remote_ts: SITE_NETS,
        ..TunnelSpec::hub()
    };
    let tweak = |on: bool| {
        move |c: &mut EndpointConfig| {
            c.fragment_size = fragment_size;
            c.fragmentation = on;
        }
    };
    Pair::new(
        endpoint_with(1, 1, &[site], tweak(a_frag)),
        endpoint_with(2, 2, &[hub], tweak(b_frag)),
    )
}

/// (fragments, whole encrypted messages) among the datagrams sent.
fn kinds(p: &Pair) -> (usize, usize) {
    let mut frags = 0;
    let mut whole = 0;
    for (_, t) in &p.sent {
        match Message::parse(&t.payload).map(|m| m.encrypted) {
            Ok(Some(Encrypted::Skf { .. })) => frags += 1,
            Ok(Some(Encrypted::Sk { .. })) => whole += 1,
            _ => {}
        }
    }
    (frags, whole)
}

#[test]
fn large_ike_auth_goes_as_fragments_both_ways() {
    let mut p = big(400, true, true);
    p.initiate();
    p.drive();
    assert!(p.established());
    p.assert_child_agrees();
    let (frags, _) = kinds(&p);
    assert!(
        frags >= 6,
        "IKE_AUTH request and response fragmented: {frags} fragments"
    );
    for (_, t) in &p.sent {
        // 400-byte IP datagrams: encrypted IKE messages of at most 400 - 20
        // (IPv4) - 8 (UDP), less 4 for the non-ESP marker on port 4500.
        let limit = if t.local.port() == 4500 { 368 } else { 372 };
        if Message::parse(&t.payload).unwrap().encrypted.is_some() {
            assert!(t.payload.len() <= limit, "{} bytes", t.payload.len());
        }
    }
    assert_eq!(p.a.counters().tx_fragmented, 1);
    assert_eq!(p.b.counters().tx_fragmented, 1);
    assert!(p.b.counters().rx_fragments >= 3);
    // The negotiated selectors survived reassembly whole.
    let c = &Pair::children(&p.a_events)[0];
    assert_eq!(c.local_ts.len(), SITE_NETS.len());
}

#[test]
fn a_lost_fragment_is_recovered_by_retransmission() {
    let mut p = big(400, true, true);
    // Drop the second datagram that is a fragment, once.
    let mut seen = 0;
    p.loss = Box::new(move |_, _, t| {
        let frag = matches!(
            Message::parse(&t.payload).map(|m| m.encrypted),
            Ok(Some(Encrypted::Skf { .. }))
        );
        if frag {
            seen += 1;
        }
        frag && seen == 2
    });
    p.initiate();
    p.drive();
    assert!(p.established());
    p.assert_child_agrees();
    assert!(p.a.counters().tx_retransmits >= 1);
}

#[test]
fn no_fragments_to_a_peer_that_did_not_announce_them() {
    for (a, b) in [(true, false), (false, true)] {
        let mut p = big(400, a, b);
        p.initiate();
        p.drive();
        assert!(p.established(), "a={a} b={b}");
        let (frags, whole) = kinds(&p);
        assert_eq!(frags, 0, "a={a} b={b}");
        assert!(whole >= 2);
    }
}

#[test]
fn small_messages_are_never_fragmented() {
    let mut p = Pair::standard();
    p.initiate();
    p.drive();
    assert!(p.established());
    assert_eq!(kinds(&p).0, 0);
}

#[test]
fn forged_fragments_are_refused_and_not_kept() {
    let mut p = big(400, true, true);
    p.initiate();
    p.drive();
    // Replay every fragment the site sent with one ciphertext byte flipped.
    let forged: Vec<_> = p
        .sent
        .iter()
        .filter(|(s, t)| {
            *s == Side::A
                && matches!(
                    Message::parse(&t.payload).map(|m| m.encrypted),
                    Ok(Some(Encrypted::Skf { .. }))
                )
        })
        .map(|(_, t)| t.clone())
        .collect();
    assert!(!forged.is_empty());
    let before = p.b.counters().rx_decrypt_failed;
    for mut t in forged {
        let n = t.payload.len();
        t.payload[n - 20] ^= 0x40;
        p.deliver(Side::A, t);
    }
    // Out of the message-ID window (the request was answered) or failing
    // the ICV: nothing is answered and the SA is unharmed.
    assert!(p.b.counters().rx_decrypt_failed >= before);
    assert!(p.established());
    p.drive();
    assert!(p.established());
}
