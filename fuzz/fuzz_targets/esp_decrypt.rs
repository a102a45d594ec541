//! The ESP receive path on arbitrary bytes: the RFC 3948 demultiplexer and
//! `InboundSa::decrypt` for every transform, ESN on and off. Never panics;
//! garbage never decrypts. The first input byte picks the transform and
//! the mode:
//! - mode 0: the rest of the input is the UDP payload, decrypted as is;
//! - mode 1: the rest is an inner packet we encrypt with the matching
//!   outbound SA, then the input's last bytes pick a truncation and a bit
//!   to flip: only the untouched packet may decrypt, to the same bytes.
#![no_main]
use anyhub_crypto::Secret;
use anyhub_dataplane::esp::udp::{classify, Natt};
use anyhub_dataplane::esp::{Algorithm, InboundSa, OutboundSa, SaInfo};
use anyhub_ike::proposal::{EncrAlg, Selected};
use anyhub_ike::wire::registry::{EncrId, IntegId, ProtocolId};
use anyhub_ike::{ChildSa, DirectionKeys, IkeSaHandle};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SUITES: &[(EncrId, u16, Option<IntegId>)] = &[
    (EncrId::AES_GCM_16, 128, None),
    (EncrId::AES_GCM_16, 256, None),
    (EncrId::CHACHA20_POLY1305, 256, None),
    (EncrId::AES_CBC, 128, Some(IntegId::HMAC_SHA2_256_128)),
    (EncrId::AES_CBC, 256, Some(IntegId::HMAC_SHA2_512_256)),
    (EncrId::AES_CBC, 128, Some(IntegId::HMAC_SHA1_96)),
];

fn child(suite: usize, esn: bool) -> ChildSa {
    let (id, key_bits, integ) = SUITES[suite];
    let proposal = Selected {
        protocol: ProtocolId::ESP,
        num: 1,
        encr: EncrAlg { id, key_bits },
        prf: None,
        integ,
        dh: None,
        esn,
        peer_spi: vec![],
    };
    let (e, i) = match Algorithm::from_selected(&proposal).unwrap() {
        Algorithm::Aead(a) => (a.keymat_len(), 0),
        Algorithm::CbcHmac { key_len, integ } => (key_len, integ.key_len()),
    };
    let keys = DirectionKeys {
        encr: Secret::new((0..e as u8).collect()),
        integ: (i > 0).then(|| Secret::new((0..i as u8).rev().collect())),
    };
    ChildSa {
        tunnel: Arc::from("fuzz"),
        ike: IkeSaHandle(1),
        spi_in: 0x0010_0001,
        spi_out: 0x0010_0001,
        proposal,
        keys_in: keys.clone(),
        keys_out: keys,
        local_ts: vec![],
        remote_ts: vec![],
        lifetime: Duration::from_secs(60),
        local: "198.51.100.1:4500".parse().unwrap(),
        remote: "198.51.100.2:4500".parse().unwrap(),
        encap: true,
        rekey_of: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let suite = usize::from(sel >> 2) % SUITES.len();
    let esn = sel & 1 != 0;
    let c = child(suite, esn);
    let info = Arc::new(SaInfo::of_child(&c, Instant::now()));
    let inb = InboundSa::new(&c, 64, info.clone()).unwrap();
    if sel & 2 == 0 {
        let _ = classify(rest);
        let mut p = rest.to_vec();
        if let Ok(d) = inb.decrypt(&mut p) {
            panic!("garbage decrypted: {d:?}");
        }
        return;
    }
    if rest.len() < 3 {
        return;
    }
    let (inner, knobs) = rest.split_at(rest.len() - 2);
    let out = OutboundSa::new(&c, 1, info).unwrap();
    let head = out.headroom();
    let mut buf = vec![0u8; head + inner.len() + out.tailroom()];
    buf[head..head + inner.len()].copy_from_slice(inner);
    buf[head] = 0x45;
    let Ok(r) = out.encrypt(&mut buf, head..head + inner.len()) else { return };
    let mut p = buf[r.clone()].to_vec();
    assert_eq!(classify(&p), Ok(Natt::Esp));
    if knobs[0] & 0x80 != 0 {
        p.truncate(p.len() - usize::from(knobs[0] & 0x7f) % p.len());
    }
    let flip = usize::from(knobs[1]);
    if flip != 0 {
        let i = flip % p.len();
        p[i] ^= 1 << (flip % 8);
    }
    let untouched = p.len() == r.len() && flip == 0;
    match inb.decrypt(&mut p) {
        Ok(d) => {
            assert!(untouched, "a mutated packet decrypted");
            assert_eq!(p[d.inner.clone()][1..], inner[1..]);
        }
        Err(e) => assert!(!untouched, "our own packet failed: {e}"),
    }
});
