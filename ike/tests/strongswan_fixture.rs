//! A real strongSwan 5.9.8 IKE_SA_INIT request (provenance in
//! fixtures/README.md): our codec reads it field by field and writes it back
//! byte for byte, our NAT-D hash agrees with strongSwan's, and our responder
//! answers it.

use anyhub_crypto::{Secret, SeededRng};
use anyhub_ike::wire::registry::{
    DhId, EncrId, ExchangeType, NotifyType, PrfId, ProtocolId, TransformType,
};
use anyhub_ike::wire::{Message, Payload};
use anyhub_ike::{
    nat_detection_hash, ts, Endpoint, EndpointConfig, Identity, ProposalSpec, TunnelConfig,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const INIT: &[u8] = include_bytes!("fixtures/strongswan-5.9.8-ike-sa-init.bin");

fn site() -> SocketAddr {
    "198.51.100.2:500".parse().unwrap()
}
fn hub() -> SocketAddr {
    "198.51.100.1:500".parse().unwrap()
}

#[test]
fn parses_field_by_field_and_re_emits_identically() {
    let msg = Message::parse(INIT).unwrap();
    let h = &msg.header;
    assert_eq!(h.spi_i, 0x8767_c7fd_b774_13f5);
    assert_eq!(h.spi_r, 0);
    assert_eq!((h.major_version, h.minor_version), (2, 0));
    assert_eq!(h.exchange, ExchangeType::IKE_SA_INIT);
    assert!(h.flags.initiator() && !h.flags.response());
    assert_eq!(h.message_id, 0);
    assert_eq!(h.length as usize, INIT.len());
    assert!(msg.encrypted.is_none());

    let Payload::Sa(sa) = &msg.payloads[0] else {
        panic!("SA first")
    };
    assert_eq!(sa.proposals.len(), 1);
    let p = &sa.proposals[0];
    assert_eq!((p.num, p.protocol, p.spi.len()), (1, ProtocolId::IKE, 0));
    let t: Vec<(TransformType, u16, Option<u16>)> = p
        .transforms
        .iter()
        .map(|t| (t.ty, t.id, t.key_length))
        .collect();
    assert_eq!(
        t,
        vec![
            (TransformType::ENCR, EncrId::AES_GCM_16.0, Some(256)),
            (TransformType::PRF, PrfId::HMAC_SHA2_256.0, None),
            (TransformType::DH, DhId::CURVE25519.0, None),
        ]
    );
    let Payload::Ke(ke) = &msg.payloads[1] else {
        panic!("KE second")
    };
    assert_eq!((ke.group, ke.data.len()), (DhId::CURVE25519, 32));
    let Payload::Nonce(n) = &msg.payloads[2] else {
        panic!("Nonce third")
    };
    assert_eq!(n.0.len(), 32);
    let notifies: Vec<NotifyType> = msg.payloads[3..]
        .iter()
        .map(|p| match p {
            Payload::Notify(n) => n.ty,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        notifies,
        vec![
            NotifyType::NAT_DETECTION_SOURCE_IP,
            NotifyType::NAT_DETECTION_DESTINATION_IP,
            NotifyType::IKEV2_FRAGMENTATION_SUPPORTED,
            NotifyType::SIGNATURE_HASH_ALGORITHMS,
            NotifyType::REDIRECT_SUPPORTED,
        ]
    );
    assert_eq!(msg.emit(), INIT, "re-emitted byte for byte");
}

/// RFC 7296 §2.23, SHA-1(SPIi | SPIr | IP | port), checked against strongSwan's.
#[test]
fn nat_detection_hash_agrees_with_strongswan() {
    let msg = Message::parse(INIT).unwrap();
    let data = |ty| {
        msg.payloads
            .iter()
            .find_map(|p| match p {
                Payload::Notify(n) if n.ty == ty => Some(n.data.clone()),
                _ => None,
            })
            .unwrap()
    };
    let spi_i = msg.header.spi_i;
    // The hash of the address strongSwan sent to is computed exactly as we do.
    assert_eq!(
        data(NotifyType::NAT_DETECTION_DESTINATION_IP),
        nat_detection_hash(spi_i, 0, hub())
    );
    // Its source hash is deliberately not the real one: with kernel-libipsec,
    // charon forces UDP encapsulation by faking a NAT in front of itself
    // (strongSwan's `encap`), so a responder must detect a NAT here and
    // carry ESP in UDP — which is why ESP is always ESP-in-UDP in our lab.
    assert_ne!(
        data(NotifyType::NAT_DETECTION_SOURCE_IP),
        nat_detection_hash(spi_i, 0, site())
    );
}

#[test]
fn our_responder_answers_it() {
    let tunnel = TunnelConfig {
        id: "site-a".into(),
        local_id: Identity::parse("hub.example.net").unwrap(),
        remote_id: Identity::parse("site-a.example.net").unwrap(),
        auth: anyhub_ike::TunnelAuth::Psk(Secret::from_slice(b"fixture")),
        ike_proposals: vec![ProposalSpec::parse_ike("aes256gcm16-prfsha256-x25519").unwrap()],
        esp_proposals: vec![ProposalSpec::parse_esp("aes256gcm16").unwrap()],
        local_ts: vec![ts::parse("10.20.0.0/24").unwrap()],
        remote_ts: vec![ts::parse("10.10.0.0/24").unwrap()],
        ike_lifetime: Duration::from_secs(3600),
        child_lifetime: Duration::from_secs(3600),
        remote_address: None,
        initiate: false,
        dpd_delay: None,
        dpd_action: anyhub_ike::config::DpdAction::Clear,
        reauth_time: None,
    };
    let mut ep = Endpoint::new(
        EndpointConfig::new(7, vec![Arc::new(tunnel)]),
        Box::new(SeededRng::new(3)),
    );
    ep.handle(Instant::now(), hub(), site(), INIT);
    let t = ep.poll_transmit().expect("an answer");
    assert_eq!((t.local, t.remote, t.natt), (hub(), site(), false));
    let answer = Message::parse(&t.payload).unwrap();
    assert!(answer.header.flags.response());
    assert_eq!(answer.header.spi_i, 0x8767_c7fd_b774_13f5);
    assert_eq!(anyhub_ike::spi::ike_spi_owner(answer.header.spi_r), 7);
    let Payload::Sa(sa) = &answer.payloads[0] else {
        panic!("SA first")
    };
    assert_eq!(sa.proposals.len(), 1);
    let Payload::Ke(ke) = &answer.payloads[1] else {
        panic!("KE second")
    };
    assert_eq!(ke.group, DhId::CURVE25519);
    // A retransmission of the same request gets the same bytes back.
    ep.handle(Instant::now(), hub(), site(), INIT);
    assert_eq!(ep.poll_transmit().unwrap().payload, t.payload);
    assert_eq!(ep.counters().rx_retransmits, 1);
}
