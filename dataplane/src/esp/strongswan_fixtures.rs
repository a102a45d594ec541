//! Known-answer tests: ESP-in-UDP packets captured from strongSwan 5.9.8
//! (kernel-libipsec) with the keys from its own log, opened by our
//! [`InboundSa`]. Provenance: `dataplane/fixtures/esp/PROVENANCE` and the
//! header of each fixture file; `capture-esp.sh` there re-creates them.

use super::sa::{InboundSa, SaInfo};
use super::{EspError, IpVersion};
use anyhub_crypto::Secret;
use anyhub_ike::proposal::{ProposalSpec, Selected};
use anyhub_ike::wire::registry::ProtocolId;
use anyhub_ike::DirectionKeys;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

struct Fixture {
    proposal: Selected,
    spi: u32,
    keys: DirectionKeys,
    packets: Vec<Vec<u8>>,
}

fn parse(text: &str) -> Fixture {
    let mut prop = None;
    let mut esn = false;
    let mut spi = 0;
    let mut encr = None;
    let mut integ = None;
    let mut packets = vec![];
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (k, v) = line.split_once(" = ").expect("key = value");
        match k {
            "proposal" => prop = Some(ProposalSpec::parse_esp(v).unwrap()),
            "esn" => esn = v == "true",
            "spi" => spi = u32::from_str_radix(v, 16).unwrap(),
            "encr_key" => encr = Some(Secret::new(hex::decode(v).unwrap())),
            "integ_key" => integ = Some(Secret::new(hex::decode(v).unwrap())),
            "packet" => packets.push(hex::decode(v).unwrap()),
            other => panic!("unknown fixture key {other}"),
        }
    }
    let spec = prop.expect("proposal");
    Fixture {
        proposal: Selected {
            protocol: ProtocolId::ESP,
            num: 1,
            encr: spec.encr[0],
            prf: None,
            integ: spec.integ.first().copied(),
            dh: None,
            esn,
            peer_spi: vec![],
        },
        spi,
        keys: DirectionKeys {
            encr: encr.expect("encr_key"),
            integ,
        },
        packets,
    }
}

fn info(f: &Fixture) -> Arc<SaInfo> {
    Arc::new(SaInfo {
        tunnel: Arc::from("strongswan"),
        ike: anyhub_ike::IkeSaHandle(1),
        spi_in: f.spi,
        spi_out: 0x0010_0001,
        proposal: f.proposal.clone(),
        local_ts: vec![],
        remote_ts: vec![],
        local: "198.51.100.1:4500".parse().unwrap(),
        remote: "198.51.100.2:4500".parse().unwrap(),
        encap: true,
        lifetime: std::time::Duration::from_secs(3600),
        installed_at: Instant::now(),
        rekey_of: None,
    })
}

fn check(name: &str, text: &str) {
    let f = parse(text);
    assert_eq!(f.packets.len(), 4, "{name}");
    let sa = InboundSa::from_parts(f.spi, &f.proposal, &f.keys, 1024, info(&f))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    for (i, p) in f.packets.iter().enumerate() {
        // The UDP payload is the ESP packet itself (RFC 3948 §2.1).
        assert_eq!(super::udp::classify(p), Ok(super::udp::Natt::Esp));
        let mut buf = p.clone();
        let d = sa
            .decrypt(&mut buf)
            .unwrap_or_else(|e| panic!("{name} packet {i}: {e}"));
        assert_eq!(d.seq, i as u64 + 1, "{name}");
        assert_eq!(d.version, IpVersion::V4);
        let ip = &buf[d.inner.clone()];
        // The inner packet is A's ICMP echo request, exactly (no TFC
        // padding from strongSwan): total length = what we return.
        assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len());
        assert_eq!(ip[9], 1, "{name}: ICMP");
        assert_eq!(
            Ipv4Addr::from(<[u8; 4]>::try_from(&ip[12..16]).unwrap()),
            Ipv4Addr::new(10, 10, 0, 1)
        );
        assert_eq!(
            Ipv4Addr::from(<[u8; 4]>::try_from(&ip[16..20]).unwrap()),
            Ipv4Addr::new(10, 20, 0, 1)
        );
        assert_eq!(ip[20], 8, "{name}: echo request");
        // The first comes from the readiness ping (56 data bytes), the
        // others from `ping -s 100`.
        assert_eq!(ip.len(), if i == 0 { 84 } else { 128 }, "{name} packet {i}");
        // A replay of the captured packet is refused.
        assert_eq!(sa.decrypt(&mut p.clone()), Err(EspError::Replay));
    }
    // A flipped bit in the captured bytes fails authentication.
    let mut bad = f.packets[3].clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let fresh = InboundSa::from_parts(f.spi, &f.proposal, &f.keys, 1024, info(&f)).unwrap();
    assert_eq!(fresh.decrypt(&mut bad), Err(EspError::AuthFailed), "{name}");
}

macro_rules! fixture {
    ($test:ident, $file:literal) => {
        #[test]
        fn $test() {
            check($file, include_str!(concat!("../../fixtures/esp/", $file)));
        }
    };
}

fixture!(strongswan_aes256gcm16, "aes256gcm16.txt");
fixture!(strongswan_aes128gcm16, "aes128gcm16.txt");
fixture!(strongswan_chacha20poly1305, "chacha20poly1305.txt");
fixture!(strongswan_aes128_sha256, "aes128_sha256.txt");
fixture!(strongswan_aes256_sha512, "aes256_sha512.txt");
