//! Certificate authentication (RFC 7296 §2.15, §3.6, §3.7; RFC 7427) on the
//! in-memory pair: certificates are made at test time (`test_pki`, over
//! BoringSSL), the wall clock is anchored to the pair's virtual clock.

mod common;

use anyhub_crypto::sig::{Curve, KeyKind, PrivateKey};
use anyhub_crypto::x509::test_pki::{self, Issued, Spec};
use anyhub_crypto::x509::TrustAnchors;
use anyhub_crypto::SeededRng;
use anyhub_ike::wire::registry::{CertEncoding, NotifyType};
use anyhub_ike::wire::{Message, Payload};
use anyhub_ike::{
    Endpoint, EndpointConfig, Event, IkeState, PubkeyAuth, SaEndReason, TunnelAuth, TunnelConfig,
    WallClock,
};
use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const RSA: KeyKind = KeyKind::Rsa { bits: 2048 };
const P256: KeyKind = KeyKind::Ec(Curve::P256);
const P384: KeyKind = KeyKind::Ec(Curve::P384);

fn ca(name: &str, key: KeyKind) -> Issued {
    test_pki::ca(&format!("C=CH, O=anyhub tests, CN={name}"), key)
}

/// An end entity of `issuer` named `dns` (subjectAltName) and CN=`dns`.
fn ee(issuer: &Issued, dns: &'static str, key: KeyKind) -> Issued {
    let subject = format!("C=CH, O=anyhub tests, CN={dns}");
    test_pki::issue(
        Some(issuer),
        &Spec {
            dns: &[dns],
            key,
            ..Spec::new(&subject)
        },
    )
}

fn pubkey(me: Issued, chain: &[&Issued], trusted: &[&Issued]) -> TunnelAuth {
    let cas = TrustAnchors::new(trusted.iter().map(|c| c.cert.clone()).collect()).unwrap();
    let chain = chain.iter().map(|c| c.cert.clone()).collect();
    TunnelAuth::Pubkey(Arc::new(
        PubkeyAuth::new(me.cert, chain, me.key, cas).unwrap(),
    ))
}

fn endpoint_with(node: u16, seed: u64, tunnel: Arc<TunnelConfig>, start: Instant) -> Endpoint {
    let mut cfg = EndpointConfig::new(node, vec![tunnel]);
    cfg.wall_clock = WallClock::Anchored {
        instant: start,
        wall: SystemTime::now(),
    };
    Endpoint::new(cfg, Box::new(SeededRng::new(seed)))
}

/// Site (A, initiator) and hub (B) with these authentications.
fn pair(site: TunnelAuth, hub: TunnelAuth) -> Pair {
    pair_with(TunnelSpec::site(), site, TunnelSpec::hub(), hub)
}

fn pair_with(
    site_spec: TunnelSpec,
    site: TunnelAuth,
    hub_spec: TunnelSpec,
    hub: TunnelAuth,
) -> Pair {
    let start = Instant::now();
    let mut p = Pair::new(
        endpoint_with(1, 11, site_spec.build_with(site), start),
        endpoint_with(2, 22, hub_spec.build_with(hub), start),
    );
    p.now = start;
    p
}

fn up(site_key: KeyKind, hub_key: KeyKind) -> Pair {
    let root = ca("Root", RSA);
    let site = ee(&root, "site-a.example.net", site_key);
    let hub = ee(&root, "hub.example.net", hub_key);
    let mut p = pair(pubkey(site, &[], &[&root]), pubkey(hub, &[], &[&root]));
    p.initiate();
    p.drive();
    p
}

/// The cleartext payloads of datagram `i` (IKE_SA_INIT only).
fn init_payloads(p: &Pair, i: usize) -> Vec<Payload> {
    Message::parse(&p.sent[i].1.payload).unwrap().payloads
}

fn has_notify(payloads: &[Payload], ty: NotifyType) -> Option<Vec<u8>> {
    payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if n.ty == ty => Some(n.data.clone()),
        _ => None,
    })
}

fn failed_auth(events: &[Event]) -> bool {
    events.iter().any(|e| {
        matches!(
            e,
            Event::IkeSaFailed {
                reason: SaEndReason::AuthenticationFailed,
                ..
            } | Event::IkeSaDeleted {
                reason: SaEndReason::AuthenticationFailed,
                ..
            }
        )
    })
}

/// Nothing is left on either side and no child SA outlived the attempt.
fn assert_nothing_left(p: &Pair) {
    assert!(
        p.a.ike_sas().is_empty(),
        "initiator keeps {:?}",
        p.a.ike_sas()
    );
    assert!(
        p.b.ike_sas().is_empty(),
        "responder keeps {:?}",
        p.b.ike_sas()
    );
    for events in [&p.a_events, &p.b_events] {
        let up = events
            .iter()
            .filter(|e| matches!(e, Event::ChildSaEstablished(_)))
            .count();
        let down = events
            .iter()
            .filter(|e| matches!(e, Event::ChildSaDeleted { .. }))
            .count();
        assert_eq!(up, down, "a child SA was left installed: {events:?}");
    }
}

#[test]
fn rsa_certificates_authenticate_both_ways() {
    let p = up(RSA, RSA);
    assert!(p.established());
    p.assert_child_agrees();
    assert_eq!(
        (p.a.counters().auth_failed, p.b.counters().auth_failed),
        (0, 0)
    );
    // RFC 7427 §4 both ways; the responder asks for certificates from our
    // CA (RFC 7296 §3.7): SHA-1 of the CA's SubjectPublicKeyInfo.
    let req = init_payloads(&p, 0);
    assert_eq!(
        has_notify(&req, NotifyType::SIGNATURE_HASH_ALGORITHMS).as_deref(),
        Some(&[0, 2, 0, 3, 0, 4][..])
    );
    let resp = init_payloads(&p, 1);
    assert!(has_notify(&resp, NotifyType::SIGNATURE_HASH_ALGORITHMS).is_some());
    let certreq = resp.iter().find_map(|p| match p {
        Payload::CertReq(r) => Some(r),
        _ => None,
    });
    let certreq = certreq.expect("CERTREQ in the IKE_SA_INIT response");
    assert_eq!(certreq.encoding, CertEncoding::X509_SIGNATURE);
    assert_eq!(certreq.data.len(), 20);
    // The peer's identity is the one its certificate vouches for.
    assert_eq!(
        p.b.ike_sas()[0].remote_id.as_ref().unwrap().to_string(),
        "fqdn:site-a.example.net"
    );
}

#[test]
fn ecdsa_certificates_authenticate_both_ways() {
    for (site, hub) in [(P256, P384), (P384, P256), (P256, RSA), (RSA, P256)] {
        let p = up(site, hub);
        assert!(p.established(), "{site} / {hub}");
        p.assert_child_agrees();
    }
}

#[test]
fn a_chain_through_an_intermediate_is_sent_and_validated() {
    let root = ca("Root", RSA);
    let inter = test_pki::issue(
        Some(&root),
        &Spec {
            ca: true,
            ..Spec::new("C=CH, O=anyhub tests, CN=Intermediate")
        },
    );
    let site = ee(&inter, "site-a.example.net", P256);
    let hub = ee(&root, "hub.example.net", P256);
    let mut p = pair(
        pubkey(site, &[&inter], &[&root]),
        pubkey(hub, &[], &[&root]),
    );
    p.initiate();
    p.drive();
    assert!(p.established());
    p.assert_child_agrees();
}

#[test]
fn distinguished_names_as_identities() {
    let root = ca("Root", P256);
    let site = test_pki::issue(Some(&root), &Spec::new("C=CH, O=anyhub tests, CN=site-a"));
    let hub = test_pki::issue(Some(&root), &Spec::new("C=CH, O=anyhub tests, CN=hub"));
    let site_spec = TunnelSpec {
        local_id: "C=CH, O=anyhub tests, CN=site-a",
        remote_id: "C=CH, O=anyhub tests, CN=hub",
        ..TunnelSpec::site()
    };
    // Written otherwise on the hub: the same DNs.
    let hub_spec = TunnelSpec {
        local_id: "c=CH,o=anyhub tests,cn=hub",
        remote_id: "C=ch, O=ANYHUB TESTS, CN=Site-A",
        ..TunnelSpec::hub()
    };
    let mut p = pair_with(
        site_spec,
        pubkey(site, &[], &[&root]),
        hub_spec,
        pubkey(hub, &[], &[&root]),
    );
    p.initiate();
    p.drive();
    assert!(p.established());
    assert_eq!(
        p.b.ike_sas()[0].remote_id.as_ref().unwrap().to_string(),
        "C=CH, O=anyhub tests, CN=site-a"
    );
}

#[test]
fn expired_certificate_fails_and_leaves_nothing() {
    let root = ca("Root", RSA);
    let now = SystemTime::now();
    let site = test_pki::issue(
        Some(&root),
        &Spec {
            dns: &["site-a.example.net"],
            not_before: now - Duration::from_secs(30 * 86_400),
            not_after: now - Duration::from_secs(86_400),
            ..Spec::new("CN=site-a")
        },
    );
    let hub = ee(&root, "hub.example.net", RSA);
    let mut p = pair(pubkey(site, &[], &[&root]), pubkey(hub, &[], &[&root]));
    p.initiate();
    p.drive();
    assert_nothing_left(&p);
    assert_eq!(p.b.counters().auth_failed, 1);
    assert!(failed_auth(&p.a_events) && failed_auth(&p.b_events));
}

#[test]
fn a_certificate_expiring_later_stops_working_then() {
    let root = ca("Root", P256);
    let now = SystemTime::now();
    let site = test_pki::issue(
        Some(&root),
        &Spec {
            dns: &["site-a.example.net"],
            not_after: now + Duration::from_secs(3600),
            ..Spec::new("CN=site-a")
        },
    );
    let hub = ee(&root, "hub.example.net", P256);
    let mut p = pair(pubkey(site, &[], &[&root]), pubkey(hub, &[], &[&root]));
    // Two hours of virtual time later, the wall clock has moved as well.
    p.now += Duration::from_secs(7200);
    p.initiate();
    p.drive();
    assert_nothing_left(&p);
    assert_eq!(p.b.counters().auth_failed, 1);
}

#[test]
fn untrusted_ca_fails_and_leaves_nothing() {
    let root = ca("Root", RSA);
    let evil = ca("Evil", RSA);
    let site = ee(&evil, "site-a.example.net", RSA);
    let hub = ee(&root, "hub.example.net", RSA);
    let mut p = pair(pubkey(site, &[], &[&evil]), pubkey(hub, &[], &[&root]));
    p.initiate();
    p.drive();
    assert_nothing_left(&p);
    assert_eq!(p.b.counters().auth_failed, 1);
    assert!(failed_auth(&p.a_events));
}

/// The initiator refuses the responder, which had already installed the
/// SA: our AUTHENTICATION_FAILED in an INFORMATIONAL (RFC 7296 §2.21.2)
/// makes it drop everything too.
#[test]
fn initiator_refusing_the_responder_clears_the_responder() {
    let root = ca("Root", P256);
    let evil = ca("Evil", P256);
    let site = ee(&root, "site-a.example.net", P256);
    let hub = ee(&evil, "hub.example.net", P256);
    let mut p = pair(
        pubkey(site, &[], &[&root]),
        pubkey(hub, &[], &[&root, &evil]),
    );
    p.initiate();
    p.drive();
    assert_nothing_left(&p);
    assert_eq!(
        (p.a.counters().auth_failed, p.b.counters().auth_failed),
        (1, 0)
    );
    assert!(failed_auth(&p.a_events) && failed_auth(&p.b_events));
    assert!(p
        .b_events
        .iter()
        .any(|e| matches!(e, Event::IkeSaEstablished(_))));
}

#[test]
fn an_id_the_certificate_does_not_name_fails() {
    let root = ca("Root", RSA);
    // Valid, trusted, but issued to another name than the IDi it is used with.
    let site = ee(&root, "other-site.example.net", RSA);
    let hub = ee(&root, "hub.example.net", RSA);
    let mut p = pair(pubkey(site, &[], &[&root]), pubkey(hub, &[], &[&root]));
    p.initiate();
    p.drive();
    assert_nothing_left(&p);
    assert_eq!(p.b.counters().auth_failed, 1);
    assert!(failed_auth(&p.a_events));
}

#[test]
fn a_bad_signature_fails() {
    let root = ca("Root", P256);
    let site = ee(&root, "site-a.example.net", P256);
    let hub = ee(&root, "hub.example.net", P256);
    // The site's certificate is genuine but it signs with another key.
    let cas = TrustAnchors::new(vec![root.cert.clone()]).unwrap();
    let forger = TunnelAuth::Pubkey(Arc::new(PubkeyAuth::new_unchecked(
        site.cert,
        vec![],
        PrivateKey::generate(P256).unwrap(),
        cas,
    )));
    let mut p = pair(forger, pubkey(hub, &[], &[&root]));
    p.initiate();
    p.drive();
    assert_nothing_left(&p);
    assert_eq!(p.b.counters().auth_failed, 1);
    assert!(failed_auth(&p.a_events));
}

#[test]
fn psk_and_certificate_tunnels_do_not_mix() {
    let root = ca("Root", P256);
    let hub = ee(&root, "hub.example.net", P256);
    let site = TunnelSpec::site().build().auth.clone();
    let mut p = pair(site, pubkey(hub, &[], &[&root]));
    p.initiate();
    p.drive();
    assert_nothing_left(&p);
    assert_eq!(p.b.counters().auth_failed, 1);
}

/// A node with both kinds of tunnel: the PSK one keeps its plain
/// IKE_SA_INIT (no hash notify from the initiator), and the responder's
/// CERTREQ does not disturb it.
#[test]
fn psk_tunnels_beside_certificate_tunnels() {
    let root = ca("Root", P256);
    let hub_cert = ee(&root, "hub.example.net", P256);
    let cert_tunnel = TunnelSpec {
        id: "site-b",
        remote_id: "site-b.example.net",
        ..TunnelSpec::hub()
    }
    .build_with(pubkey(hub_cert, &[], &[&root]));
    let start = Instant::now();
    let mut cfg = EndpointConfig::new(2, vec![TunnelSpec::hub().build(), cert_tunnel]);
    cfg.wall_clock = WallClock::Anchored {
        instant: start,
        wall: SystemTime::now(),
    };
    let hub = Endpoint::new(cfg, Box::new(SeededRng::new(22)));
    let mut p = Pair::new(endpoint(1, 11, &[TunnelSpec::site()]), hub);
    p.now = start;
    p.initiate();
    p.drive();
    assert!(p.established());
    assert_eq!(p.b.ike_sas()[0].state, IkeState::Established);
    let req = init_payloads(&p, 0);
    assert!(has_notify(&req, NotifyType::SIGNATURE_HASH_ALGORITHMS).is_none());
}
