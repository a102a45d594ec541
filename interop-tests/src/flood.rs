//! The IKE_SA_INIT flood of the `cookie-flood` case: a bounded number of
//! well-formed IKE_SA_INIT requests, each with a fresh SPIi and a spoofed
//! source address, sent at a fixed rate from inside a namespace of ours.
//!
//! Every request is a real one (made by our own initiator once, then
//! re-stamped), so a responder without defences pays a Diffie-Hellman
//! exchange for each; replies go to addresses nobody has.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::sys;

/// What the flood sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    pub packets: u64,
    pub errors: u64,
}

/// One IKE_SA_INIT request as our initiator makes it (x25519, PSK tunnel
/// to `target`), to re-stamp.
fn template(target: SocketAddr) -> Result<Vec<u8>> {
    use anyhub_crypto::{Secret, SeededRng};
    use anyhub_ike::config::{DpdAction, TunnelAuth};
    use anyhub_ike::{ts, EndpointConfig, Identity, ProposalSpec, TunnelConfig};
    fn e(x: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("{x}")
    }
    let tunnel = TunnelConfig {
        id: "flood".into(),
        local_id: Identity::parse("flood.example.net").map_err(e)?,
        remote_id: Identity::parse("hub.example.net").map_err(e)?,
        auth: TunnelAuth::Psk(Secret::from_slice(b"flood")),
        ike_proposals: vec![ProposalSpec::parse_ike("aes256gcm16-prfsha256-x25519").map_err(e)?],
        esp_proposals: vec![ProposalSpec::parse_esp("aes256gcm16").map_err(e)?],
        local_ts: vec![ts::parse("10.200.0.0/16").map_err(e)?],
        remote_ts: vec![ts::parse("10.20.0.0/24").map_err(e)?],
        ike_lifetime: Duration::from_secs(3600),
        child_lifetime: Duration::from_secs(3600),
        remote_address: None,
        initiate: false,
        dpd_delay: None,
        dpd_action: DpdAction::Clear,
        reauth_time: None,
    };
    let mut ep = anyhub_ike::Endpoint::new(
        EndpointConfig::new(4000, vec![std::sync::Arc::new(tunnel)]),
        Box::new(SeededRng::new(7)),
    );
    let local = SocketAddr::new(Ipv4Addr::new(10, 200, 0, 1).into(), 500);
    ep.initiate(Instant::now(), "flood", local, target)
        .context("building the flood's IKE_SA_INIT")?;
    Ok(ep.poll_transmit().context("no IKE_SA_INIT")?.payload)
}

/// IPv4 header checksum (RFC 791 §3.1).
fn ip_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// IPv4 + UDP (checksum 0: optional over IPv4, RFC 768) around `payload`.
fn packet(src: Ipv4Addr, dst: SocketAddr, payload: &[u8], out: &mut Vec<u8>) {
    let SocketAddr::V4(dst) = dst else {
        unreachable!("the lab is IPv4")
    };
    let total = 20 + 8 + payload.len();
    out.clear();
    out.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.ip().octets());
    let c = ip_checksum(&out[..20]);
    out[10..12].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&500u16.to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(payload);
}

/// Sends `count` spoofed IKE_SA_INIT requests to `target` from inside
/// namespace `ns`, `rate` per second, sources spread over 10.200.0.0/16.
/// Stops early after `max_time`.
pub fn flood(
    ns: &str,
    target: SocketAddr,
    count: u64,
    rate: u64,
    max_time: Duration,
) -> Result<Sent> {
    let fd = sys::raw_ipv4_socket_in(ns).context("raw socket in the flood's namespace")?;
    let template = template(target)?;
    let SocketAddr::V4(dst) = target else {
        anyhow::bail!("the lab is IPv4")
    };
    let start = Instant::now();
    let mut sent = Sent::default();
    let mut buf = Vec::with_capacity(template.len() + 28);
    let mut msg = template.clone();
    for i in 0..count {
        // Pace: packet i leaves at start + i/rate.
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        let now = Instant::now();
        if now - start > max_time {
            break;
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        // A fresh SPIi (never 0) and a source address of its own.
        msg[..8].copy_from_slice(&(0x0f00_0000_0000_0000 | (i + 1)).to_be_bytes());
        let n = (i % 65_000 + 2) as u32;
        let src = Ipv4Addr::new(10, 200, (n >> 8) as u8, n as u8);
        packet(src, target, &msg, &mut buf);
        match sys::send_raw_ipv4(&fd, &buf, *dst.ip()) {
            Ok(()) => sent.packets += 1,
            Err(_) => sent.errors += 1,
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checksum_verifies() {
        let mut out = Vec::new();
        packet(
            Ipv4Addr::new(10, 200, 0, 2),
            "198.51.100.1:500".parse().unwrap(),
            b"xyz",
            &mut out,
        );
        assert_eq!(out.len(), 31);
        assert_eq!(
            ip_checksum(&out[..20]),
            0,
            "a correct header sums to 0xffff"
        );
        assert_eq!(&out[28..], b"xyz");
    }

    #[test]
    fn template_is_an_ike_sa_init_request() {
        let t = template("198.51.100.1:500".parse().unwrap()).unwrap();
        let m = anyhub_ike::wire::Message::parse(&t).unwrap();
        assert_eq!(
            m.header.exchange,
            anyhub_ike::wire::registry::ExchangeType::IKE_SA_INIT
        );
        assert!(!m.header.flags.response());
    }
}
