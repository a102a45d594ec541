//! An initiator and a responder Endpoint wired together in memory, with a
//! virtual clock, packet loss and an optional NAT in front of the initiator
//! (quinn's `Pair`). Every test here is deterministic: seeded RNGs, no
//! sockets, no sleeping.

mod common;

use anyhub_crypto::SeededRng;
use anyhub_ike::wire::registry::NotifyType;
use anyhub_ike::{ts, Event, IkeState, SaEndReason, Transmit};
use common::*;

#[test]
fn establishes_with_every_supported_ike_proposal() {
    let encrs = ["aes128gcm16", "aes256gcm16"];
    let prfs = ["prfsha256", "prfsha384"];
    let groups = ["x25519", "ecp256", "ecp384", "modp2048"];
    let mut combos: Vec<String> = vec![];
    for e in encrs {
        for p in prfs {
            for g in groups {
                combos.push(format!("{e}-{p}-{g}"));
            }
        }
    }
    combos.push("aes256-sha256-modp2048".into());
    combos.push("chacha20poly1305-prfsha256-x25519".into());
    combos.push("aes128-sha1-prfsha1-ecp256".into());
    combos.push("aes256-sha512-prfsha512-x25519".into());
    for (i, c) in combos.iter().enumerate() {
        let ike: &'static str = Box::leak(c.clone().into_boxed_str());
        let ike_list: &'static [&'static str] = Box::leak(vec![ike].into_boxed_slice());
        let site = TunnelSpec {
            ike: ike_list,
            ..TunnelSpec::site()
        };
        let hub = TunnelSpec {
            ike: ike_list,
            ..TunnelSpec::hub()
        };
        let mut p = Pair::new(
            endpoint(1, i as u64, &[site]),
            endpoint(2, 100 + i as u64, &[hub]),
        );
        p.initiate();
        p.drive();
        assert!(p.established(), "{c}: not established");
        let sa = &p.b.ike_sas()[0];
        // strongSwan writes the PRF it derives from sha256 explicitly.
        let expected = if c == "aes256-sha256-modp2048" {
            "aes256-sha256-prfsha256-modp2048"
        } else {
            c.as_str()
        };
        assert_eq!(sa.proposal.as_deref(), Some(expected));
        p.assert_child_agrees();
    }
}

#[test]
fn ike_proposal_is_reported_in_strongswan_notation() {
    let mut p = Pair::standard();
    p.initiate();
    p.drive();
    assert_eq!(
        p.b.ike_sas()[0].proposal.as_deref(),
        Some("aes256gcm16-prfsha256-x25519")
    );
    assert_eq!(
        p.a.ike_sas()[0].proposal.as_deref(),
        Some("aes256gcm16-prfsha256-x25519")
    );
}

#[test]
fn establishes_with_every_esp_proposal() {
    for (i, esp) in [
        "aes128gcm16",
        "aes256gcm16",
        "chacha20poly1305",
        "aes256-sha256",
        "aes128-sha1",
        "aes256-sha512-esn",
        "aes128gcm16-esn",
        "aes256gcm16-x25519",
    ]
    .iter()
    .enumerate()
    {
        let esp: &'static [&'static str] = Box::leak(vec![*esp].into_boxed_slice());
        let site = TunnelSpec {
            esp,
            ..TunnelSpec::site()
        };
        let hub = TunnelSpec {
            esp,
            ..TunnelSpec::hub()
        };
        let mut p = Pair::new(
            endpoint(1, i as u64, &[site]),
            endpoint(2, 50 + i as u64, &[hub]),
        );
        p.initiate();
        p.drive();
        assert!(p.established(), "{esp:?}");
        let (a, _) = p.assert_child_agrees();
        assert_eq!(a.proposal.esn, esp[0].ends_with("-esn"), "{esp:?}");
        assert_eq!(a.proposal.dh, None, "no PFS group in IKE_AUTH's child");
        let aead = !esp[0].contains('-') || esp[0].contains("gcm");
        assert_eq!(a.keys_in.integ.is_none(), aead, "{esp:?}");
    }
}

#[test]
fn spis_carry_the_node_index() {
    let mut p = Pair::standard();
    p.initiate();
    p.drive();
    let sa = &p.b.ike_sas()[0];
    assert_eq!(anyhub_ike::spi::ike_spi_owner(sa.spi_r), 2);
    assert_eq!(anyhub_ike::spi::ike_spi_owner(sa.spi_i), 1);
    let (a, b) = p.assert_child_agrees();
    assert_eq!(anyhub_ike::spi::esp_spi_owner(b.spi_in), 2);
    assert_eq!(anyhub_ike::spi::esp_spi_owner(a.spi_in), 1);
}

#[test]
fn invalid_ke_payload_makes_the_initiator_retry_with_the_asked_group() {
    let site = TunnelSpec {
        ike: &["aes256gcm16-prfsha256-x25519-ecp256"],
        ..TunnelSpec::site()
    };
    let hub = TunnelSpec {
        ike: &["aes256gcm16-prfsha256-ecp256"],
        ..TunnelSpec::hub()
    };
    let mut p = Pair::new(endpoint(1, 1, &[site]), endpoint(2, 2, &[hub]));
    p.initiate();
    p.drive();
    assert!(p.established());
    assert_eq!(p.b.counters().invalid_ke_sent, 1);
    assert_eq!(
        p.b.ike_sas()[0].proposal.as_deref(),
        Some("aes256gcm16-prfsha256-ecp256")
    );
    p.assert_child_agrees();
}

#[test]
fn responder_takes_an_acceptable_key_exchange_without_a_round_trip() {
    // The hub prefers ecp256 but accepts x25519, which the site's KE carries.
    let site = TunnelSpec {
        ike: &["aes256gcm16-prfsha256-x25519-ecp256"],
        ..TunnelSpec::site()
    };
    let hub = TunnelSpec {
        ike: &["aes256gcm16-prfsha256-ecp256-x25519"],
        ..TunnelSpec::hub()
    };
    let mut p = Pair::new(endpoint(1, 1, &[site]), endpoint(2, 2, &[hub]));
    p.initiate();
    p.drive();
    assert!(p.established());
    assert_eq!(p.b.counters().invalid_ke_sent, 0);
    assert_eq!(
        p.b.ike_sas()[0].proposal.as_deref(),
        Some("aes256gcm16-prfsha256-x25519")
    );
}

#[test]
fn wrong_psk_fails_on_both_sides_and_leaves_nothing() {
    let site = TunnelSpec {
        psk: "not the secret",
        ..TunnelSpec::site()
    };
    let mut p = Pair::new(
        endpoint(1, 1, &[site]),
        endpoint(2, 2, &[TunnelSpec::hub()]),
    );
    p.initiate();
    p.drive();
    assert!(p.a.ike_sas().is_empty(), "initiator keeps nothing");
    assert!(p.b.ike_sas().is_empty(), "responder keeps nothing");
    assert_eq!(p.b.counters().auth_failed, 1);
    assert!(p.a_events.iter().any(|e| matches!(
        e,
        Event::IkeSaFailed {
            reason: SaEndReason::AuthenticationFailed,
            ..
        }
    )));
    assert!(Pair::children(&p.a_events).is_empty() && Pair::children(&p.b_events).is_empty());
    assert!(!p
        .b_events
        .iter()
        .any(|e| matches!(e, Event::IkeSaEstablished(_))));
}

#[test]
fn unknown_identity_is_refused() {
    let site = TunnelSpec {
        local_id: "intruder.example.net",
        ..TunnelSpec::site()
    };
    let mut p = Pair::new(
        endpoint(1, 1, &[site]),
        endpoint(2, 2, &[TunnelSpec::hub()]),
    );
    p.initiate();
    p.drive();
    assert!(p.b.ike_sas().is_empty());
    assert_eq!(p.b.counters().auth_failed, 1);
}

#[test]
fn no_common_proposal() {
    let site = TunnelSpec {
        ike: &["aes128-sha1-modp2048"],
        ..TunnelSpec::site()
    };
    let mut p = Pair::new(
        endpoint(1, 1, &[site]),
        endpoint(2, 2, &[TunnelSpec::hub()]),
    );
    p.initiate();
    p.drive();
    assert!(p.a.ike_sas().is_empty() && p.b.ike_sas().is_empty());
    assert_eq!(p.b.counters().no_proposal_chosen, 1);
    assert!(p.a_events.iter().any(|e| matches!(
        e,
        Event::IkeSaFailed {
            reason: SaEndReason::NoProposalChosen,
            ..
        }
    )));
}

#[test]
fn no_common_esp_proposal_keeps_the_ike_sa() {
    let site = TunnelSpec {
        esp: &["aes128-sha1"],
        ..TunnelSpec::site()
    };
    let mut p = Pair::new(
        endpoint(1, 1, &[site]),
        endpoint(2, 2, &[TunnelSpec::hub()]),
    );
    p.initiate();
    p.drive();
    assert!(
        p.established(),
        "RFC 7296 §1.2: the IKE SA survives a failed first child"
    );
    assert!(Pair::children(&p.a_events).is_empty() && Pair::children(&p.b_events).is_empty());
    assert!(p.a_events.iter().any(|e| matches!(
        e,
        Event::ChildSaFailed {
            reason: NotifyType::NO_PROPOSAL_CHOSEN,
            ..
        }
    )));
}

#[test]
fn traffic_selectors_are_narrowed_to_the_configured_ones() {
    let site = TunnelSpec {
        local_ts: &["10.10.0.0/16"],
        remote_ts: &["10.20.0.0/16"],
        ..TunnelSpec::site()
    };
    let hub = TunnelSpec {
        local_ts: &["10.20.1.0/24"],
        remote_ts: &["10.10.1.0/24"],
        ..TunnelSpec::hub()
    };
    let mut p = Pair::new(endpoint(1, 1, &[site]), endpoint(2, 2, &[hub]));
    p.initiate();
    p.drive();
    let (a, b) = p.assert_child_agrees();
    assert_eq!(a.local_ts, vec![ts::parse("10.10.1.0/24").unwrap()]);
    assert_eq!(a.remote_ts, vec![ts::parse("10.20.1.0/24").unwrap()]);
    assert_eq!(b.remote_ts, vec![ts::parse("10.10.1.0/24").unwrap()]);
}

#[test]
fn disjoint_traffic_selectors_are_unacceptable() {
    let site = TunnelSpec {
        local_ts: &["172.16.0.0/12"],
        ..TunnelSpec::site()
    };
    let mut p = Pair::new(
        endpoint(1, 1, &[site]),
        endpoint(2, 2, &[TunnelSpec::hub()]),
    );
    p.initiate();
    p.drive();
    assert!(p.established());
    assert!(Pair::children(&p.b_events).is_empty());
    assert!(p.b_events.iter().any(|e| matches!(
        e,
        Event::ChildSaFailed {
            reason: NotifyType::TS_UNACCEPTABLE,
            ..
        }
    )));
}

#[test]
fn identity_selects_the_tunnel_and_its_psk() {
    let hub_b = TunnelSpec {
        id: "site-b",
        remote_id: "site-b@example.net",
        psk: "b's own secret",
        local_ts: &["10.30.0.0/24"],
        remote_ts: &["10.40.0.0/24"],
        ..TunnelSpec::hub()
    };
    let site_b = TunnelSpec {
        local_id: "site-b@example.net",
        psk: "b's own secret",
        local_ts: &["10.40.0.0/24"],
        remote_ts: &["10.30.0.0/24"],
        ..TunnelSpec::site()
    };
    let mut p = Pair::new(
        endpoint(1, 1, &[site_b]),
        endpoint(2, 2, &[TunnelSpec::hub(), hub_b]),
    );
    p.initiate();
    p.drive();
    assert!(p.established());
    let sa = &p.b.ike_sas()[0];
    assert_eq!(sa.tunnel.as_deref(), Some("site-b"));
    assert_eq!(
        sa.remote_id.as_ref().unwrap().to_string(),
        "email:site-b@example.net"
    );
}

#[test]
fn lost_init_response_is_retransmitted_and_answered_from_cache() {
    let mut p = Pair::standard();
    // Drop B's first datagram (its IKE_SA_INIT response).
    let mut dropped = false;
    p.loss = Box::new(move |_, side, _| {
        if side == Side::B && !dropped {
            dropped = true;
            return true;
        }
        false
    });
    p.initiate();
    p.drive();
    assert!(p.established());
    assert_eq!(p.a.counters().tx_retransmits, 1);
    assert_eq!(p.b.counters().rx_retransmits, 1);
    // The retransmitted answer is byte-identical to the lost one.
    let b_sent: Vec<&Transmit> = p
        .sent
        .iter()
        .filter(|(s, _)| *s == Side::B)
        .map(|(_, t)| t)
        .collect();
    assert_eq!(b_sent[0].payload, b_sent[1].payload);
    p.assert_child_agrees();
}

#[test]
fn lost_auth_response_is_answered_from_cache_without_a_second_child() {
    let mut p = Pair::standard();
    let mut b_count = 0;
    p.loss = Box::new(move |_, side, _| {
        if side == Side::B {
            b_count += 1;
            return b_count == 2; // the IKE_AUTH response
        }
        false
    });
    p.initiate();
    p.drive();
    assert!(p.established());
    assert_eq!(p.b.counters().rx_retransmits, 1);
    assert_eq!(p.b.counters().child_sa_established, 1);
    p.assert_child_agrees();
}

#[test]
fn silent_peer_times_out_with_backoff() {
    let mut p = Pair::standard();
    p.loss = Box::new(|_, side, _| side == Side::A);
    p.initiate();
    p.drive();
    assert!(p.a.ike_sas().is_empty());
    assert!(p.a_events.iter().any(|e| matches!(
        e,
        Event::IkeSaFailed {
            reason: SaEndReason::Timeout,
            ..
        }
    )));
    // 1 original + 5 retransmissions (strongSwan's default schedule).
    assert_eq!(p.sent.iter().filter(|(s, _)| *s == Side::A).count(), 6);
    assert_eq!(p.a.counters().tx_retransmits, 5);
    assert_eq!(p.a.poll_timeout(), None, "no timer left behind");
}

#[test]
fn half_open_responder_state_expires() {
    let mut p = Pair::standard();
    // Drop everything A sends after its IKE_SA_INIT.
    p.loss = Box::new(|i, side, _| side == Side::A && i > 0);
    p.initiate();
    p.drive();
    assert!(p.b.ike_sas().is_empty());
    assert!(p.b_events.iter().any(|e| matches!(
        e,
        Event::IkeSaFailed {
            reason: SaEndReason::HalfOpenExpired,
            ..
        }
    )));
    assert_eq!(p.b.poll_timeout(), None);
}

#[test]
fn initial_contact_replaces_the_old_ike_sa() {
    let mut p = Pair::standard();
    p.initiate();
    p.drive();
    assert!(p.established());
    let old = p.b.ike_sas()[0].spi_r;
    // The site "reboots": a fresh endpoint that knows no SA sends INITIAL_CONTACT.
    p.a = endpoint(1, 999, &[TunnelSpec::site()]);
    p.initiate();
    p.drive();
    let sas = p.b.ike_sas();
    assert_eq!(sas.len(), 1, "the old IKE SA is gone");
    assert_ne!(sas[0].spi_r, old);
    assert!(p.b_events.iter().any(|e| matches!(
        e,
        Event::IkeSaDeleted {
            reason: SaEndReason::ReplacedByInitialContact,
            ..
        }
    )));
    let deleted_children = p
        .b_events
        .iter()
        .filter(|e| matches!(e, Event::ChildSaDeleted { .. }))
        .count();
    assert_eq!(deleted_children, 1);
}

#[test]
fn second_sa_without_initial_contact_coexists() {
    let mut p = Pair::standard();
    p.initiate();
    p.drive();
    // The same endpoint initiates again: it holds an SA, so no INITIAL_CONTACT.
    p.initiate();
    p.drive();
    assert_eq!(p.b.ike_sas().len(), 2);
}

#[test]
fn nat_in_front_of_the_initiator_floats_to_4500() {
    let mut p = Pair::standard();
    p.nat = true;
    p.initiate();
    p.drive();
    assert!(p.established());
    let (a, b) = p.assert_child_agrees();
    assert!(a.encap && b.encap, "ESP goes in UDP behind a NAT");
    let a_ports: Vec<u16> = p
        .sent
        .iter()
        .filter(|(s, t)| *s == Side::A && t.payload != [0xff])
        .map(|(_, t)| t.local.port())
        .collect();
    assert_eq!(
        a_ports,
        vec![500, 4500],
        "IKE_AUTH floated to the NAT-T port"
    );
    assert_eq!(p.b.ike_sas()[0].remote, addr(NAT_IP, 14500));
}

/// strongSwan's `encap = yes`: the initiator hides its address in NAT-D,
/// both sides then think there is a NAT, float to 4500 and encapsulate.
#[test]
fn forced_encapsulation_floats_without_a_nat() {
    let mut p = Pair::new(
        endpoint_with(1, 11, &[TunnelSpec::site()], |c| c.force_encap = true),
        endpoint(2, 22, &[TunnelSpec::hub()]),
    );
    p.initiate();
    p.drive();
    assert!(p.established());
    let (a, b) = p.assert_child_agrees();
    assert!(a.encap && b.encap, "ESP in UDP although there is no NAT");
    let a_ports: Vec<u16> = p
        .sent
        .iter()
        .filter(|(s, t)| *s == Side::A && t.payload != [0xff])
        .map(|(_, t)| t.local.port())
        .collect();
    assert_eq!(
        a_ports,
        vec![500, 4500],
        "IKE_AUTH floated to the NAT-T port"
    );
    assert_eq!(
        p.b.ike_sas()[0].remote,
        addr(A_IP, 4500),
        "no NAT: the real address"
    );
}

#[test]
fn no_nat_stays_on_500() {
    let mut p = Pair::standard();
    p.initiate();
    p.drive();
    let (a, _) = p.assert_child_agrees();
    assert!(!a.encap);
    assert!(p.sent.iter().all(|(_, t)| t.local.port() == 500 && !t.natt));
}

#[test]
fn delete_from_either_side_removes_both() {
    for deleter in [Side::A, Side::B] {
        let mut p = Pair::standard();
        p.initiate();
        p.drive();
        let (ep, h) = match deleter {
            Side::A => (
                &mut p.a,
                p.a_events
                    .iter()
                    .find_map(|e| match e {
                        Event::IkeSaEstablished(i) => Some(i.handle),
                        _ => None,
                    })
                    .unwrap(),
            ),
            Side::B => (
                &mut p.b,
                p.b_events
                    .iter()
                    .find_map(|e| match e {
                        Event::IkeSaEstablished(i) => Some(i.handle),
                        _ => None,
                    })
                    .unwrap(),
            ),
        };
        assert!(ep.delete_ike_sa(p.now, h));
        p.drive();
        assert!(
            p.a.ike_sas().is_empty() && p.b.ike_sas().is_empty(),
            "{deleter:?}"
        );
        for evs in [&p.a_events, &p.b_events] {
            assert!(evs.iter().any(|e| matches!(e, Event::IkeSaDeleted { .. })));
            assert_eq!(
                evs.iter()
                    .filter(|e| matches!(e, Event::ChildSaDeleted { .. }))
                    .count(),
                1
            );
        }
    }
}

#[test]
fn same_seeds_give_the_same_bytes() {
    let run = || {
        let mut p = Pair::standard();
        p.initiate();
        p.drive();
        p.sent
            .iter()
            .map(|(_, t)| t.payload.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn garbage_is_counted_and_dropped() {
    let mut p = Pair::standard();
    p.initiate();
    p.drive();
    let real: Vec<Vec<u8>> = p.sent.iter().map(|(_, t)| t.payload.clone()).collect();
    let before = p.b.counters().clone();
    let mut rng = SeededRng::new(5);
    let from = addr(A_IP, 500);
    let to = addr(B_IP, 500);
    let mut fed = 0u64;
    for msg in &real {
        // Every truncation, and random single-byte corruptions.
        for n in 0..msg.len() {
            p.b.handle(p.now, to, from, &msg[..n]);
            fed += 1;
        }
        for _ in 0..200 {
            let mut m = msg.clone();
            let mut r = [0u8; 3];
            anyhub_crypto::Rng::fill(&mut rng, &mut r);
            let i = (u16::from_be_bytes([r[0], r[1]]) as usize) % m.len();
            m[i] ^= r[2] | 1;
            p.b.handle(p.now, to, from, &m);
            fed += 1;
        }
    }
    for len in [0usize, 1, 27, 28, 100, 2000] {
        let mut junk = vec![0u8; len];
        anyhub_crypto::Rng::fill(&mut rng, &mut junk);
        p.b.handle(p.now, to, from, &junk);
        fed += 1;
    }
    let after = p.b.counters();
    assert_eq!(after.rx_datagrams - before.rx_datagrams, fed);
    assert!(after.rx_malformed > before.rx_malformed);
    assert!(
        after.rx_decrypt_failed > before.rx_decrypt_failed,
        "corrupted SK payloads fail their ICV"
    );
    // The real SA is untouched: still one established SA on B.
    assert_eq!(
        p.b.ike_sas()
            .iter()
            .filter(|s| s.state == IkeState::Established)
            .count(),
        1
    );
}

/// Writes every datagram of a few handshakes into `$ANYHUB_DUMP_CORPUS`
/// (the fuzzers' seed corpus, `scripts/fuzz.sh`); does nothing otherwise.
#[test]
fn dump_seed_corpus() {
    let Some(dir) = std::env::var_os("ANYHUB_DUMP_CORPUS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut n = 0;
    for ike in [
        &["aes256gcm16-prfsha256-x25519"][..],
        &["aes256-sha256-modp2048"],
        &["aes128gcm16-prfsha384-ecp384-x25519"],
    ] {
        let site = TunnelSpec {
            ike,
            ..TunnelSpec::site()
        };
        let hub = TunnelSpec {
            ike,
            ..TunnelSpec::hub()
        };
        let mut p = Pair::new(endpoint(1, 1, &[site]), endpoint(2, 2, &[hub]));
        p.nat = true;
        p.initiate();
        p.drive();
        let h = p.a_events.iter().find_map(|e| match e {
            Event::IkeSaEstablished(i) => Some(i.handle),
            _ => None,
        });
        p.a.delete_ike_sa(p.now, h.unwrap());
        p.drive();
        for (_, t) in &p.sent {
            std::fs::write(dir.join(format!("pair-{n:03}")), &t.payload).unwrap();
            n += 1;
        }
    }
}
