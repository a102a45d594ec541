//! Both directions against iproute2's bytes: the messages we build from a
//! `ChildSa` equal what `ip xfrm …` sent (nlmsg_seq normalised), and
//! parsing the capture gives the message we expect.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhub_crypto::Secret;
use anyhub_ike::proposal::EncrAlg;
use anyhub_ike::wire::registry::{EncrId, IntegId, ProtocolId};
use anyhub_ike::{ChildSa, DirectionKeys, IkeSaHandle, Selected};

use super::child::{
    delete_messages, policy_messages, sa_messages, PolicyOptions, SaOptions, XfrmBuildError,
};
use super::fixtures::*;
use super::nla::{kind, Nla};
use super::structs::{Address, AF_INET};
use super::{flags, XfrmError, XfrmMessage};
use crate::wire::mutate;

fn hex(s: &str) -> Secret {
    Secret::new(hex::decode(s).unwrap())
}

const K36: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223";
const K20: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3";
const K32: &str = "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f";
const K32B: &str = "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f";

fn ts(s: &str) -> anyhub_ike::wire::TrafficSelector {
    anyhub_ike::ts::parse(s).unwrap()
}

/// A child SA between us (`local`) and the peer (`remote`); keys not under
/// test are zero.
fn child(
    local: &str,
    remote: &str,
    encr: (EncrId, u16),
    integ: Option<IntegId>,
    esn: bool,
    encap: bool,
) -> ChildSa {
    let zero = |n| DirectionKeys {
        encr: Secret::new(vec![0; n]),
        integ: integ.map(|_| Secret::new(vec![0; 32])),
    };
    let encr_len = match encr.0 {
        EncrId::AES_CBC => usize::from(encr.1) / 8,
        _ => usize::from(encr.1) / 8 + 4,
    };
    ChildSa {
        tunnel: Arc::from("t"),
        ike: IkeSaHandle(1),
        spi_in: 0,
        spi_out: 0,
        proposal: Selected {
            protocol: ProtocolId::ESP,
            num: 1,
            encr: EncrAlg {
                id: encr.0,
                key_bits: encr.1,
            },
            prf: None,
            integ,
            dh: None,
            esn,
            peer_spi: vec![],
        },
        keys_in: zero(encr_len),
        keys_out: zero(encr_len),
        local_ts: vec![ts("10.1.0.0/16")],
        remote_ts: vec![ts("10.2.0.0/24")],
        lifetime: Duration::from_secs(3600),
        local: local.parse::<SocketAddr>().unwrap(),
        remote: remote.parse::<SocketAddr>().unwrap(),
        encap,
        rekey_of: None,
    }
}

/// The capture with its nlmsg_seq zeroed (iproute2 uses the time).
fn normalised(capture: &[u8]) -> Vec<u8> {
    let mut c = capture.to_vec();
    c[8..12].fill(0);
    c
}

fn emit(m: &XfrmMessage) -> Vec<u8> {
    m.emit(flags::REQUEST | flags::ACK, 0, 0).to_vec()
}

/// encode(expected) == capture and parse(capture) == expected.
fn both_ways(expected: &XfrmMessage, capture: &[u8]) {
    assert_eq!(emit(expected), normalised(capture), "encode == capture");
    let (h, parsed) = XfrmMessage::parse(capture).unwrap();
    assert_eq!(h.len as usize, capture.len());
    assert_eq!(h.flags, flags::REQUEST | flags::ACK);
    assert_eq!(&parsed, expected, "parse == expected");
}

#[test]
fn newsa_aes_gcm_256_esp_in_udp_esn() {
    // Inbound: from the peer 198.51.100.2:4500 to us 192.0.2.1:4500.
    let mut c = child(
        "192.0.2.1:4500",
        "198.51.100.2:4500",
        (EncrId::AES_GCM_16, 256),
        None,
        true,
        true,
    );
    c.spi_in = 0xc001_0203;
    c.keys_in.encr = hex(K36);
    let opts = SaOptions {
        reqid: 7,
        replay_window: 1024,
    };
    let [inbound, outbound] = sa_messages(&c, &opts).unwrap();
    both_ways(&inbound, &NEWSA_GCM256_ENCAP_ESN);
    // The outbound one mirrors it.
    let XfrmMessage::NewSa { info, nlas, .. } = outbound else {
        panic!()
    };
    assert_eq!(
        info.id.daddr,
        Address::from_ip("198.51.100.2".parse().unwrap())
    );
    assert!(matches!(nlas[1], Nla::Encap(e) if e.sport == 4500 && e.dport == 4500));
}

#[test]
fn newsa_aes_gcm_128_outbound_legacy_window() {
    let mut c = child(
        "192.0.2.1:500",
        "198.51.100.2:500",
        (EncrId::AES_GCM_16, 128),
        None,
        false,
        false,
    );
    c.spi_out = 0xc102_0304;
    c.keys_out.encr = hex(K20);
    let [_, outbound] = sa_messages(
        &c,
        &SaOptions {
            reqid: 7,
            replay_window: 32,
        },
    )
    .unwrap();
    both_ways(&outbound, &NEWSA_GCM128_OUT);
}

#[test]
fn newsa_aes_cbc_hmac_sha256_ipv6() {
    let mut c = child(
        "[2001:db8:1::1]:500",
        "[2001:db8:2::2]:500",
        (EncrId::AES_CBC, 256),
        Some(IntegId::HMAC_SHA2_256_128),
        false,
        false,
    );
    c.spi_out = 0x00c0_ffee;
    c.keys_out = DirectionKeys {
        encr: hex(K32),
        integ: Some(hex(K32B)),
    };
    let [_, outbound] = sa_messages(
        &c,
        &SaOptions {
            reqid: 9,
            replay_window: 32,
        },
    )
    .unwrap();
    both_ways(&outbound, &NEWSA_CBC_SHA256_V6);
}

#[test]
fn newsa_chacha20_poly1305_nat_port() {
    // The peer sits behind a NAT: its ESP-in-UDP comes from port 31337.
    let mut c = child(
        "192.0.2.1:4500",
        "198.51.100.2:31337",
        (EncrId::CHACHA20_POLY1305, 256),
        None,
        false,
        true,
    );
    c.spi_in = 0xc0aa_bbcc;
    c.keys_in.encr = hex(K36);
    let [inbound, _] = sa_messages(
        &c,
        &SaOptions {
            reqid: 7,
            replay_window: 1024,
        },
    )
    .unwrap();
    both_ways(&inbound, &NEWSA_CHACHA_ENCAP);
}

#[test]
fn delsa() {
    let mut c = child(
        "192.0.2.1:4500",
        "198.51.100.2:4500",
        (EncrId::AES_GCM_16, 256),
        None,
        true,
        true,
    );
    c.spi_in = 0xc001_0203;
    let msgs = delete_messages(&c, &PolicyOptions::default()).unwrap();
    // Policies first, then inbound and outbound states.
    let n = msgs.len();
    both_ways(&msgs[n - 2], &DELSA);
}

#[test]
fn newpolicy_out_and_delpolicy() {
    let c = child(
        "192.0.2.1:4500",
        "198.51.100.2:4500",
        (EncrId::AES_GCM_16, 256),
        None,
        false,
        true,
    );
    let opts = PolicyOptions {
        reqid: 7,
        priority: Some(2000),
        fwd: true,
    };
    let p = policy_messages(&c, &opts).unwrap();
    assert_eq!(p.len(), 3, "out, in, fwd");
    both_ways(&p[0], &NEWPOLICY_OUT);
    let d = delete_messages(&c, &opts).unwrap();
    both_ways(&d[0], &DELPOLICY_OUT);
}

#[test]
fn newpolicy_in_with_protocol_and_port() {
    let mut c = child(
        "192.0.2.1:4500",
        "198.51.100.2:4500",
        (EncrId::AES_GCM_16, 256),
        None,
        false,
        true,
    );
    c.local_ts = vec![ts("10.1.0.0/16[tcp]")];
    c.remote_ts = vec![ts("10.2.0.0/24[tcp/443]")];
    let p = policy_messages(
        &c,
        &PolicyOptions {
            reqid: 7,
            priority: Some(1000),
            fwd: false,
        },
    )
    .unwrap();
    assert_eq!(p.len(), 2);
    both_ways(&p[1], &NEWPOLICY_IN_TCP);
}

#[test]
fn newpolicy_fwd_ipv6() {
    let mut c = child(
        "[2001:db8:1::1]:500",
        "[2001:db8:2::2]:500",
        (EncrId::AES_GCM_16, 128),
        None,
        false,
        false,
    );
    c.local_ts = vec![ts("2001:db8:a::/48")];
    c.remote_ts = vec![ts("2001:db8:b::/48")];
    let p = policy_messages(
        &c,
        &PolicyOptions {
            reqid: 9,
            priority: Some(3000),
            fwd: true,
        },
    )
    .unwrap();
    both_ways(&p[2], &NEWPOLICY_FWD_V6);
}

#[test]
fn computed_priorities_prefer_specific_selectors() {
    let mut c = child(
        "192.0.2.1:4500",
        "198.51.100.2:4500",
        (EncrId::AES_GCM_16, 256),
        None,
        false,
        true,
    );
    c.local_ts = vec![ts("10.1.0.0/16"), ts("10.1.2.0/24[tcp/22]")];
    c.remote_ts = vec![ts("0.0.0.0/0")];
    let p = policy_messages(&c, &PolicyOptions::default()).unwrap();
    let prio = |i: usize| match &p[i] {
        XfrmMessage::NewPolicy { info, .. } => info.priority,
        _ => panic!(),
    };
    assert_eq!(p.len(), 6);
    assert!(prio(1) < prio(0), "the /24 with a port beats the /16");
}

#[test]
fn ranges_expand_and_are_bounded() {
    let mut c = child(
        "192.0.2.1:4500",
        "198.51.100.2:4500",
        (EncrId::AES_GCM_16, 256),
        None,
        false,
        true,
    );
    let mut r = ts("10.2.0.0/24");
    r.start_addr = "10.2.0.1".parse().unwrap();
    r.end_addr = "10.2.0.6".parse().unwrap();
    c.remote_ts = vec![r];
    let p = policy_messages(&c, &PolicyOptions::default()).unwrap();
    assert_eq!(p.len(), 4 * 3, "four prefixes, three directions");
    let mut wide = ts("10.0.0.0/8");
    wide.start_addr = "0.0.0.1".parse().unwrap();
    wide.end_addr = "255.255.255.254".parse().unwrap();
    c.remote_ts = vec![wide];
    assert!(matches!(
        policy_messages(&c, &PolicyOptions::default()),
        Err(XfrmBuildError::TooManyPolicies(_))
    ));
    c.remote_ts = vec![ts("10.2.0.0/24[icmp/2048]")];
    assert_eq!(
        policy_messages(&c, &PolicyOptions::default()).unwrap_err(),
        XfrmBuildError::IcmpSelector
    );
}

#[test]
fn bad_keys_and_algorithms_are_refused() {
    let mut c = child(
        "192.0.2.1:4500",
        "198.51.100.2:4500",
        (EncrId::AES_GCM_16, 256),
        None,
        false,
        true,
    );
    c.keys_in.encr = Secret::new(vec![0; 32]); // salt missing
    assert!(matches!(
        sa_messages(&c, &SaOptions::default()),
        Err(XfrmBuildError::KeyLength {
            got: 32,
            want: 36,
            ..
        })
    ));
    let mut c = child(
        "192.0.2.1:4500",
        "198.51.100.2:4500",
        (EncrId::AES_CTR, 128),
        None,
        false,
        true,
    );
    c.keys_in.encr = Secret::new(vec![0; 20]);
    assert!(matches!(
        sa_messages(&c, &SaOptions::default()),
        Err(XfrmBuildError::UnsupportedAlgorithm(_))
    ));
    let c = child(
        "192.0.2.1:4500",
        "[2001:db8::1]:4500",
        (EncrId::AES_GCM_16, 256),
        None,
        false,
        true,
    );
    assert_eq!(
        sa_messages(&c, &SaOptions::default()).unwrap_err(),
        XfrmBuildError::MixedFamilies
    );
}

#[test]
fn keys_never_in_debug() {
    let (_, m) = XfrmMessage::parse(&NEWSA_GCM256_ENCAP_ESN).unwrap();
    let dbg = format!("{m:?}");
    assert!(dbg.contains("redacted"), "{dbg}");
    for needle in ["[0, 1, 2, 3", "0x00, 0x01", "000102"] {
        assert!(!dbg.contains(needle), "{dbg}");
    }
}

#[test]
fn unknown_attributes_and_messages_round_trip() {
    // NEWSA with an XFRMA_MARK (21) and an XFRMA_IF_ID (31) appended, as a
    // kernel dump might carry them.
    let mut b = NEWSA_GCM128_OUT.to_vec();
    b.extend_from_slice(&[12, 0, 21, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    b.extend_from_slice(&[8, 0, 31, 0, 42, 0, 0, 0]);
    let len = b.len() as u32;
    b[..4].copy_from_slice(&len.to_ne_bytes());
    let (h, m) = XfrmMessage::parse(&b).unwrap();
    let XfrmMessage::NewSa { nlas, .. } = &m else {
        panic!()
    };
    assert_eq!(
        nlas[1],
        Nla::Other {
            kind: 21,
            value: vec![1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]
        }
    );
    assert_eq!(m.emit(h.flags, h.seq, h.pid).to_vec(), b);
    // A message type we do not model.
    let mut other = vec![0u8; 16 + 5];
    other[..4].copy_from_slice(&21u32.to_ne_bytes());
    other[4..6].copy_from_slice(&24u16.to_ne_bytes()); // XFRM_MSG_EXPIRE
    other[16..].copy_from_slice(&[1, 2, 3, 4, 5]);
    let (h, m) = XfrmMessage::parse(&other).unwrap();
    assert_eq!(
        m,
        XfrmMessage::Other {
            kind: 24,
            body: vec![1, 2, 3, 4, 5]
        }
    );
    assert_eq!(m.emit(h.flags, h.seq, h.pid).to_vec(), other);
}

#[test]
fn parse_checks_lengths() {
    assert_eq!(
        XfrmMessage::parse(&DELSA[..15]).unwrap_err(),
        XfrmError::Truncated
    );
    assert_eq!(
        XfrmMessage::parse(&DELSA[..59]).unwrap_err(),
        XfrmError::Truncated
    );
    let mut short = DELSA.to_vec();
    short[..4].copy_from_slice(&20u32.to_ne_bytes());
    assert_eq!(
        XfrmMessage::parse(&short).unwrap_err(),
        XfrmError::Truncated
    );
    // An attribute claiming more than the message holds.
    let mut b = DELSA.to_vec();
    b[40] = 200;
    assert_eq!(XfrmMessage::parse(&b).unwrap_err(), XfrmError::Truncated);
    let mut b = DELSA.to_vec();
    b[40] = 2;
    assert_eq!(XfrmMessage::parse(&b).unwrap_err(), XfrmError::Malformed);
    // A key length beyond any algorithm.
    let mut b = NEWSA_GCM128_OUT.to_vec();
    let at = 16 + 224 + 4 + 64;
    b[at..at + 4].copy_from_slice(&4096u32.to_ne_bytes());
    assert_eq!(XfrmMessage::parse(&b).unwrap_err(), XfrmError::Malformed);
    let _ = (AF_INET, kind::TMPL);
}

#[test]
fn garbage_never_panics() {
    for seed in [
        &NEWSA_GCM256_ENCAP_ESN[..],
        &NEWSA_CBC_SHA256_V6[..],
        &NEWPOLICY_IN_TCP[..],
        &DELSA[..],
        &DELPOLICY_OUT[..],
    ] {
        mutate::variants(seed, 5000, |b| {
            if let Ok((h, m)) = XfrmMessage::parse(b) {
                // Whatever parses, emits to something that parses the same.
                let again = m.emit(h.flags, h.seq, h.pid);
                assert_eq!(XfrmMessage::parse(&again).map(|x| x.1), Ok(m));
            }
        });
    }
}
