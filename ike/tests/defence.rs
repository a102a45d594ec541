//! Flood defence (RFC 7296 §2.6) in the pair simulator: past the
//! threshold the responder keeps no state for IKE_SA_INIT without a valid
//! cookie, a real initiator still gets through by echoing it, and the
//! half-open table stays bounded in total and per address whatever arrives.

mod common;

use anyhub_ike::wire::registry::NotifyType;
use anyhub_ike::wire::{Message, Payload};
use anyhub_ike::MAX_HALF_OPEN;
use common::*;
use std::net::SocketAddr;
use std::time::Duration;

/// A real IKE_SA_INIT request from a fresh initiator, to replay with other
/// SPIs and source addresses (the flood's template).
fn init_request() -> Vec<u8> {
    let mut a = endpoint(1, 77, &[TunnelSpec::site()]);
    a.initiate(
        std::time::Instant::now(),
        "hub",
        addr(A_IP, 500),
        addr(B_IP, 500),
    )
    .unwrap();
    a.poll_transmit().unwrap().payload
}

/// The template with SPIi replaced.
fn with_spi(template: &[u8], spi: u64) -> Vec<u8> {
    let mut m = template.to_vec();
    m[..8].copy_from_slice(&spi.to_be_bytes());
    m
}

fn spoofed(i: u32) -> SocketAddr {
    let b = i.to_be_bytes();
    SocketAddr::new(std::net::Ipv4Addr::new(10, b[1], b[2], b[3]).into(), 500)
}

fn is_cookie_answer(bytes: &[u8]) -> bool {
    Message::parse(bytes).is_ok_and(
        |m| matches!(m.payloads.as_slice(), [Payload::Notify(n)] if n.ty == NotifyType::COOKIE),
    )
}

#[test]
fn with_cookies_on_a_real_initiator_still_connects() {
    let mut p = Pair::new(
        endpoint(1, 1, &[TunnelSpec::site()]),
        endpoint_with(2, 2, &[TunnelSpec::hub()], |c| c.cookie_threshold = 0),
    );
    p.initiate();
    p.drive();
    assert!(p.established());
    p.assert_child_agrees();
    assert_eq!(p.b.counters().cookies_sent, 1);
    assert_eq!(p.b.counters().cookies_invalid, 0);
}

#[test]
fn a_flood_of_spoofed_requests_leaves_state_bounded_and_a_real_peer_gets_in() {
    let threshold = 64;
    let mut p = Pair::new(
        endpoint(1, 1, &[TunnelSpec::site()]),
        endpoint_with(2, 2, &[TunnelSpec::hub()], |c| {
            c.cookie_threshold = threshold
        }),
    );
    let template = init_request();
    let to = addr(B_IP, 500);
    let n = 20_000u32;
    let mut answered_with_state = 0;
    for i in 0..n {
        let m = with_spi(&template, 0x1000 + u64::from(i));
        p.b.handle(p.now, to, spoofed(i), &m);
        while let Some(t) = p.b.poll_transmit() {
            if !is_cookie_answer(&t.payload) {
                answered_with_state += 1;
            }
        }
    }
    assert_eq!(
        p.b.half_open_count(),
        threshold,
        "state only below the threshold"
    );
    assert_eq!(answered_with_state, threshold);
    assert_eq!(p.b.counters().cookies_sent, u64::from(n) - threshold as u64);
    // A real initiator during the flood: one cookie round trip, then in.
    p.initiate();
    p.drive_for(Duration::from_secs(5));
    assert_eq!(
        p.a.ike_sas()
            .iter()
            .filter(|s| s.state == anyhub_ike::IkeState::Established)
            .count(),
        1
    );
    // The flood's half-open SAs expire; nothing is left of them.
    p.drive_for(Duration::from_secs(60));
    assert_eq!(p.b.half_open_count(), 0);
    assert_eq!(p.b.ike_sas().len(), 1);
}

#[test]
fn forged_and_stale_cookies_get_no_state() {
    let mut p = Pair::new(
        endpoint(1, 1, &[TunnelSpec::site()]),
        endpoint_with(2, 2, &[TunnelSpec::hub()], |c| c.cookie_threshold = 0),
    );
    let template = init_request();
    let to = addr(B_IP, 500);
    let from = addr(A_IP, 500);
    p.b.handle(p.now, to, from, &template);
    let answer = p.b.poll_transmit().unwrap();
    let cookie = match &Message::parse(&answer.payload).unwrap().payloads[0] {
        Payload::Notify(n) => n.data.clone(),
        other => panic!("{other:?}"),
    };
    // Echo the cookie from another address, and a tampered one from ours.
    let mut msg = Message::parse(&template).unwrap();
    let cookie_notify = |data: Vec<u8>| {
        Payload::Notify(anyhub_ike::wire::Notify {
            protocol: anyhub_ike::wire::registry::ProtocolId::NONE,
            spi: vec![],
            ty: NotifyType::COOKIE,
            data,
        })
    };
    msg.payloads.insert(0, cookie_notify(cookie.clone()));
    p.b.handle(p.now, to, addr("192.0.2.99", 500), &msg.emit());
    let mut bad = cookie.clone();
    bad[3] ^= 1;
    msg.payloads[0] = cookie_notify(bad);
    p.b.handle(p.now, to, from, &msg.emit());
    assert_eq!(p.b.counters().cookies_invalid, 2);
    assert_eq!(p.b.half_open_count(), 0);
    // The genuine echo is accepted.
    msg.payloads[0] = cookie_notify(cookie);
    p.b.handle(p.now, to, from, &msg.emit());
    assert_eq!(p.b.half_open_count(), 1);
}

#[test]
fn one_address_cannot_take_the_whole_table() {
    let per_ip = 16;
    let mut b = endpoint_with(2, 2, &[TunnelSpec::hub()], |c| {
        c.half_open_per_ip = per_ip;
        c.cookie_threshold = usize::MAX;
        c.cookie_threshold_ip = usize::MAX;
    });
    let template = init_request();
    let now = std::time::Instant::now();
    for i in 0..1000u64 {
        b.handle(
            now,
            addr(B_IP, 500),
            addr("192.0.2.50", 500),
            &with_spi(&template, 0x10 + i),
        );
    }
    assert_eq!(b.half_open_count(), per_ip);
    assert_eq!(b.counters().half_open_refused, 1000 - per_ip as u64);
    // Another address is not affected.
    b.handle(
        now,
        addr(B_IP, 500),
        addr("192.0.2.51", 500),
        &with_spi(&template, 0x9999),
    );
    assert_eq!(b.half_open_count(), per_ip + 1);
}

#[test]
fn the_total_bound_holds_without_cookies() {
    let mut b = endpoint_with(2, 2, &[TunnelSpec::hub()], |c| {
        c.cookie_threshold = usize::MAX;
        c.cookie_threshold_ip = usize::MAX;
    });
    let template = init_request();
    let now = std::time::Instant::now();
    let n = MAX_HALF_OPEN as u32 + 500;
    for i in 0..n {
        b.handle(
            now,
            addr(B_IP, 500),
            spoofed(i),
            &with_spi(&template, 0x10 + u64::from(i)),
        );
        while b.poll_transmit().is_some() {}
    }
    assert_eq!(b.half_open_count(), MAX_HALF_OPEN);
    assert_eq!(b.counters().half_open_refused, 500);
}
