//! A responder Endpoint fed arbitrary datagrams: several per input (split
//! on a marker), from a few source addresses, with time moving on between
//! them. It must never panic, and its state must stay bounded.
#![no_main]
use anyhub_crypto::{SeededRng, Secret};
use anyhub_ike::{ts, Endpoint, EndpointConfig, Identity, ProposalSpec, TunnelConfig};
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn endpoint() -> Endpoint {
    let tunnel = TunnelConfig {
        id: "site-a".into(),
        local_id: Identity::parse("hub.example.net").unwrap(),
        remote_id: Identity::parse("site-a.example.net").unwrap(),
        auth: anyhub_ike::TunnelAuth::Psk(Secret::from_slice(b"fuzzing psk")),
        ike_proposals: ["aes256gcm16-prfsha256-x25519", "aes128-sha256-ecp256"]
            .iter()
            .map(|p| ProposalSpec::parse_ike(p).unwrap())
            .collect(),
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
    Endpoint::new(EndpointConfig::new(2, vec![Arc::new(tunnel)]), Box::new(SeededRng::new(1)))
}

fuzz_target!(|data: &[u8]| {
    let mut ep = endpoint();
    let start = Instant::now();
    let local: SocketAddr = "192.0.2.2:500".parse().unwrap();
    for (i, dgram) in split(data).into_iter().enumerate() {
        let now = start + Duration::from_millis(250 * i as u64);
        let remote: SocketAddr = SocketAddr::new([192, 0, 2, 10 + (i % 3) as u8].into(), 500);
        ep.handle(now, local, remote, dgram);
        ep.handle_timeout(now);
        while ep.poll_transmit().is_some() {}
        while ep.poll_event().is_some() {}
    }
    ep.handle_timeout(start + Duration::from_secs(3600));
    assert!(ep.ike_sas().is_empty(), "every half-open SA expires");
});

/// Datagrams are separated by the 4-byte marker "IKE|".
fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(pos) = rest.windows(4).position(|w| w == b"IKE|") {
        out.push(&rest[..pos]);
        rest = &rest[pos + 4..];
    }
    out.push(rest);
    out
}
